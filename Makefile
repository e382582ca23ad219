# bitplan — build, test, demo, bench.
#
#   make            the bitplan program (build/bitplan)
#   make test       every test: C units (also under ASan+UBSan) and pytest cross-checks
#   make demo       the whole job on SmolLM2-135M: fetch, measure, allocate, pack, eval
#   make bench      benchmarks (bench/), written to stdout and BENCHMARKS.md by hand
#   make fuzz       the libFuzzer harnesses of tests/fuzz/, each run FUZZ_SECONDS (60)
#
# Modules are folders; every .c in a module folder goes into libbitplan.a. Files
# named *_avx2.c / *_avx512.c are compiled for those instruction sets and chosen at
# run time. runtime/cuda/*.cu is built with nvcc when it is present.

BUILD    ?= build
CC       ?= cc
OPT      ?= -O2
SAN      ?=
CFLAGS_NOSAN = -std=c11 -D_GNU_SOURCE -g $(OPT) -fopenmp -Wall -Wextra -Werror \
              -Wno-unused-function -I. -I$(BUILD)/gen
CFLAGS_BASE = $(CFLAGS_NOSAN) $(SAN)
# The SIMD kernels (*_avx2.c, *_avx512.c) with these sanitizers: the fuzz build
# leaves them out (they parse nothing, and instrumented they take minutes to compile).
SIMD_SAN ?= $(SAN)
# libmvec is glibc's vector math (the forward pass's expf, four lanes at a time).
LDLIBS   = -lglpk -lsqlite3 -llapack -lopenblas -lxxhash -lmvec -lm -lpthread
AVX2     = -mavx2 -mfma -mf16c -mbmi2
AVX512   = $(AVX2) -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni

JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
NVCC     ?= $(shell command -v nvcc 2>/dev/null || (test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc))
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NO_CUDA  ?=
CUDA_EMU ?=
ifneq ($(SAN),)
NO_CUDA := 1
endif

# MPI (par/): built in when mpicc is present, unless NO_MPI=1; without it a job is
# one process. Open MPI's wrapper says its flags with --showme, MPICH's pkg-config.
MPICC    ?= $(shell command -v mpicc 2>/dev/null)
NO_MPI   ?=
ifneq ($(MPICC),)
ifeq ($(NO_MPI),)
HAVE_MPI   = 1
MPI_CFLAGS := -DBITPLAN_MPI $(shell $(MPICC) --showme:compile 2>/dev/null || pkg-config --cflags mpich 2>/dev/null)
MPI_LIBS   := $(shell $(MPICC) --showme:link 2>/dev/null || pkg-config --libs mpich 2>/dev/null)
CFLAGS_NOSAN += $(MPI_CFLAGS)
LDLIBS   += $(MPI_LIBS)
endif
endif

MODULES  = util par layout model db measure allocate pack runtime reports
LIB_SRC  = $(foreach m,$(MODULES),$(wildcard $(m)/*.c $(m)/arch/*/*.c))
CU_SRC   = $(wildcard runtime/cuda/*.cu)
ifeq ($(NVCC)$(NO_CUDA),$(NVCC))
ifneq ($(NVCC),)
HAVE_CUDA = 1
endif
endif
ifdef HAVE_CUDA
LIB_SRC += $(filter-out runtime/cuda/cuda_stub.c,$(wildcard runtime/cuda/*.c))
CU_OBJ   = $(CU_SRC:%.cu=$(BUILD)/%.o)
LDLIBS  += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib -lcudart -lcublas -lstdc++ -Wl,-rpath,$(CUDA_HOME)/lib64
NVFLAGS  = -O2 -std=c++17 -I. -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings \
           -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
           -gencode arch=compute_90,code=compute_90
else ifneq ($(CUDA_EMU),)
ifneq ($(wildcard $(CUDA_HOME)/include/cuda_runtime.h),)
# CUDA_EMU=1 (the sanitizer build of `make test`): runtime/cuda/*.cu runs on the
# CPU emulation of tests/cuda_emu/ (rewritten by rewrite.py, compiled by the C++
# compiler), so the kernels and the GPU forward pass are checked without a GPU.
EMU_CU   = 1
CU_OBJ   = $(CU_SRC:%.cu=$(BUILD)/emu/%.o) $(BUILD)/tests/cuda_emu/emu.o
LDLIBS  += -lstdc++
EMU_CXXFLAGS = -std=c++17 -g $(OPT) -Wall -Wextra -Werror -I. -I$(CUDA_HOME)/include $(SAN)
endif
endif
ifndef HAVE_CUDA
ifndef EMU_CU
LIB_SRC += $(wildcard runtime/cuda/cuda_stub.c)
CU_OBJ   =
endif
endif
LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/%.o) $(CU_OBJ)
CLI_SRC  = $(wildcard cli/*.c)
CLI_OBJ  = $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_SRC = $(wildcard tests/test_*.c)
TEST_BIN = $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# tests/tool_*.c: small programs the pytest cross-checks drive (no cmocka)
TOOL_SRC = $(wildcard tests/tool_*.c)
TOOL_BIN = $(TOOL_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_SRC = $(wildcard bench/bench_*.c)
BENCH_BIN = $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all test test-c test-asan test-py demo bench deps model text clean fuzz fuzz-build
all: $(BUILD)/bitplan

$(BUILD)/libbitplan.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/bitplan: $(CLI_OBJ) $(BUILD)/libbitplan.a
	$(CC) $(CFLAGS_BASE) -o $@ $(CLI_OBJ) $(BUILD)/libbitplan.a $(LDLIBS)

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_NOSAN) $(SIMD_SAN) $(AVX2) -MMD -MP -c -o $@ $<

$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_NOSAN) $(SIMD_SAN) $(AVX512) -MMD -MP -c -o $@ $<

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_BASE) $(if $(HAVE_CUDA),-DBITPLAN_CUDA=1) -MMD -MP -c -o $@ $<

$(BUILD)/%.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVFLAGS) -c -o $@ $<

$(BUILD)/emu/%.cpp: %.cu tests/cuda_emu/rewrite.py
	@mkdir -p $(@D)
	python3 tests/cuda_emu/rewrite.py $< $@

$(BUILD)/emu/%.o: $(BUILD)/emu/%.cpp tests/cuda_emu/emu.h
	$(CXX) $(EMU_CXXFLAGS) -include tests/cuda_emu/emu.h -MMD -MP -c -o $@ $<

$(BUILD)/tests/cuda_emu/emu.o: tests/cuda_emu/emu.cpp tests/cuda_emu/emu.h
	@mkdir -p $(@D)
	$(CXX) $(EMU_CXXFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(BUILD)/libbitplan.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_BASE) -o $@ $< $(BUILD)/libbitplan.a -lcmocka $(LDLIBS)

$(BUILD)/tests/tool_%: tests/tool_%.c $(BUILD)/libbitplan.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_BASE) -o $@ $< $(BUILD)/libbitplan.a $(LDLIBS)

# tests/tool_faults runs the program in its own process (cli/main.c with its main
# renamed) and makes the allocations of bitplan's own objects fail on demand: the
# link wraps the allocation functions (libc's and SQLite's own calls stay as they are).
FAULT_WRAP = -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup,--wrap=strndup,--wrap=aligned_alloc,--wrap=posix_memalign
FAULT_CLI  = $(BUILD)/tests/cli_main.o $(filter-out $(BUILD)/cli/main.o,$(CLI_OBJ))

$(BUILD)/tests/cli_main.o: cli/main.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_BASE) $(if $(HAVE_CUDA),-DBITPLAN_CUDA=1) -Dmain=bitplan_main -MMD -MP -c -o $@ $<

$(BUILD)/tests/tool_faults: tests/tool_faults.c $(FAULT_CLI) $(BUILD)/libbitplan.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_BASE) $(FAULT_WRAP) -o $@ $< $(FAULT_CLI) $(BUILD)/libbitplan.a $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libbitplan.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_BASE) -o $@ $< $(BUILD)/libbitplan.a $(LDLIBS)

# tests/fuzz/fuzz_*.c: libFuzzer harnesses, linked against a clang build of the
# library with the fuzzer's coverage hooks and ASan + UBSan (build-fuzz/).
$(BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_util.h $(BUILD)/libbitplan.a
	$(CC) $(CFLAGS_BASE) -fsanitize=fuzzer -o $@ $< $(BUILD)/libbitplan.a $(LDLIBS)

# db/schema.sql compiled in as a C string.
$(BUILD)/gen/schema_sql.h: db/schema.sql
	@mkdir -p $(@D)
	{ echo 'static const char db_schema_sql[] ='; sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/    "/' -e 's/$$/\\n"/' $<; echo ';'; } >$@
$(BUILD)/db/db.o: $(BUILD)/gen/schema_sql.h

deps:
	@bash scripts/deps.sh
model: deps
	@bash scripts/get-model.sh
text: deps
	@bash scripts/get-text.sh

# Set-up runs first and alone (a fresh machine has no compiler libraries yet); the
# builds then run in parallel.
SETUP = bash scripts/deps.sh && bash scripts/get-model.sh && bash scripts/get-text.sh

# Everything a test run needs, built once; then C tests, the same under ASan and
# UBSan, and the pytest cross-checks; one summary line at the end.
test:
	@$(SETUP)
	@$(MAKE) --no-print-directory -j$(JOBS) all $(TEST_BIN) $(TOOL_BIN)
	@$(MAKE) --no-print-directory -j$(JOBS) BUILD=build-san CUDA_EMU=1 SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" OPT=-O1 \
	    build-san/bitplan $(TEST_SRC:tests/%.c=build-san/tests/%) $(TOOL_SRC:tests/%.c=build-san/tests/%)
	@$(MAKE) --no-print-directory fuzz-build
	@bash scripts/run-tests.sh

test-c: all $(TEST_BIN) $(TOOL_BIN)
	@BITPLAN_ONLY=c bash scripts/run-tests.sh

test-py: all $(TOOL_BIN)
	@BITPLAN_ONLY=py bash scripts/run-tests.sh

bench:
	@$(SETUP)
	@$(MAKE) --no-print-directory -j$(JOBS) all $(BENCH_BIN)
	@bash scripts/run-bench.sh

demo:
	@$(SETUP)
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@bash scripts/demo.sh

# The fuzzers: built with clang (FUZZ_CC) into build-fuzz/, then each runs for
# FUZZ_SECONDS on a copy of its corpus in build-fuzz/corpus/ (the committed one in
# tests/fuzz/corpus/ is never written); inputs that crash land in
# build-fuzz/crashes/TARGET/ and fail the run.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SRC      = $(wildcard tests/fuzz/fuzz_*.c)
fuzz-build:
	@$(MAKE) --no-print-directory -j$(JOBS) BUILD=build-fuzz CC=$(FUZZ_CC) OPT=-O1 SIMD_SAN= \
	    SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
	    $(FUZZ_SRC:tests/fuzz/%.c=build-fuzz/%)

fuzz: fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/run-fuzz.sh campaign

clean:
	rm -rf build build-san build-fuzz

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(BUILD)/tests/cli_main.d
.PRECIOUS: $(BUILD)/emu/%.cpp
