#!/usr/bin/env python3
"""Extracts character vectors from an R lazy-load database (NAME.rdb + NAME.rdx)
as plain UTF-8 text files, one line per vector element.

    rdata-text.py DIR/Rdata OUTDIR [OBJECT=FILE ...]

With no OBJECT=FILE pairs, every character vector is written as OUTDIR/OBJECT.txt.
This script only reads: it never evaluates R code and never writes outside OUTDIR.

Formats (R Internals, "Serialization Formats" and "Lazy loading"):
  NAME.rdx  gzip (or a zlib block, below) holding one serialized list:
            variables = named list of c(offset, length) into NAME.rdb,
            references, compressed.
  NAME.rdb  a sequence of blocks: u32 big-endian uncompressed length, then a
            zlib stream; each block is one serialized object.
  serialized object: "X\\n" (XDR, big-endian), version 2 or 3, two R versions,
            (v3) the native encoding; then items, each an int of flags:
            type = flags & 0xff, has-attributes bit 9, has-tag bit 10,
            CHARSXP encoding bits in flags >> 12.
"""
import gzip
import os
import struct
import sys
import zlib

NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP = 9, 10, 13, 14, 15, 16
DOTSXP, VECSXP, EXPRSXP, RAWSXP, S4SXP = 17, 19, 20, 24, 25
REFSXP, NILVALUE, GLOBALENV, UNBOUND, MISSINGARG, BASENS = 255, 254, 253, 252, 251, 250
NAMESPACESXP, PACKAGESXP, PERSISTSXP = 249, 248, 247
EMPTYENV, BASEENV, ATTRLANGSXP, ATTRLISTSXP, ALTREP = 242, 241, 240, 239, 238
LATIN1_MASK, BYTES_MASK = 1 << 2, 1 << 1


class RList(list):
    """A pairlist or generic vector, with its attributes (names etc.)."""
    attrs = None


class Reader:
    """A minimal R unserializer for data objects (vectors, lists, pairlists)."""

    def __init__(self, data):
        self.d, self.p, self.refs = data, 0, []

    def take(self, n):
        if self.p + n > len(self.d):
            raise ValueError(f"serialized object truncated at byte {self.p} (wanted {n})")
        b = self.d[self.p:self.p + n]
        self.p += n
        return b

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def length(self):
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def header(self):
        fmt = self.take(2)
        if fmt != b"X\n":
            raise ValueError(f"serialization format {fmt!r} is not XDR (X\\n)")
        version = self.int()
        self.int(), self.int()
        if version == 3:
            self.take(self.int())
        elif version != 2:
            raise ValueError(f"serialization version {version} (want 2 or 3)")

    def item(self):
        flags = self.int()
        t, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if t in (NILVALUE, EMPTYENV, BASEENV, GLOBALENV, UNBOUND, MISSINGARG, BASENS):
            return None
        if t == REFSXP:
            i = flags >> 8
            return self.refs[(i if i else self.int()) - 1]
        if t in (PERSISTSXP, NAMESPACESXP, PACKAGESXP):
            self.int()  # flags of the name vector (always 0)
            v = [self.item() for _ in range(self.int())]
            self.refs.append(v)
            return v
        if t == SYMSXP:
            s = self.item()
            self.refs.append(s)
            return s
        if t in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            return self.pairlist(flags)
        if t == ENVSXP:
            env = {}
            self.refs.append(env)
            self.int()
            env["enclos"], env["frame"], env["hashtab"], env["attrs"] = (
                self.item(), self.item(), self.item(), self.item())
            return env
        if t == CHARSXP:
            return self.charsxp(flags)
        value = self.vector(t)
        if has_attr:
            attrs = self.item()
            if isinstance(value, list):
                value = RList(value)
                value.attrs = attrs
        return value

    def pairlist(self, flags):
        out = RList()
        out.attrs = {}
        while True:
            t = flags & 0xFF
            attrs = self.item() if flags & (1 << 9) else None
            tag = self.item() if flags & (1 << 10) else None
            out.append((tag, self.item()))
            if attrs:
                out.attrs = attrs
            flags = self.int()
            if flags & 0xFF != t:
                self.p -= 4
                self.item()  # the tail is NILVALUE or some other object: consume it
                return out

    def charsxp(self, flags):
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = self.take(n)
        levels = flags >> 12
        if levels & LATIN1_MASK:
            return raw.decode("latin-1")
        if levels & BYTES_MASK:
            return raw.decode("utf-8", "replace")
        return raw.decode("utf-8")

    def vector(self, t):
        if t in (LGLSXP, INTSXP):
            n = self.length()
            return list(struct.unpack(f">{n}i", self.take(4 * n)))
        if t == REALSXP:
            n = self.length()
            return list(struct.unpack(f">{n}d", self.take(8 * n)))
        if t == CPLXSXP:
            n = self.length()
            return list(struct.unpack(f">{2 * n}d", self.take(16 * n)))
        if t == RAWSXP:
            return self.take(self.length())
        if t in (STRSXP, VECSXP, EXPRSXP):
            return [self.item() for _ in range(self.length())]
        if t == NILSXP:
            return None
        raise ValueError(f"unsupported R type {t} at byte {self.p - 4}")


def unserialize(data):
    r = Reader(data)
    r.header()
    return r.item()


def named(pairs_or_list):
    """Turns a named R list (VECSXP with a names attribute) into a dict."""
    attrs = getattr(pairs_or_list, "attrs", None) or []
    names = next((v for k, v in attrs if k == "names"), None)
    if names is None:
        raise ValueError("list has no names attribute")
    return dict(zip(names, pairs_or_list))


def block(data):
    """One block: u32 big-endian uncompressed length, then a zlib stream."""
    n = struct.unpack(">I", data[:4])[0]
    out = zlib.decompress(data[4:])
    if len(out) != n:
        raise ValueError(f"block says {n} bytes, zlib gave {len(out)}")
    return out


def read_index(path):
    raw = open(path, "rb").read()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else block(raw)
    return named(unserialize(data))


def objects(base):
    """Yields (name, value) for every object of the lazy-load database BASE."""
    index = read_index(base + ".rdx")
    variables = named(index["variables"])
    rdb = open(base + ".rdb", "rb").read()
    for name, (off, n) in variables.items():
        off, n = int(off), int(n)
        if off + n > len(rdb):
            raise ValueError(f"{base}.rdb: object {name} at {off}+{n} past the end ({len(rdb)})")
        yield name, unserialize(block(rdb[off:off + n]))


def main(argv):
    if len(argv) < 3:
        sys.exit("usage: rdata-text.py DIR/Rdata OUTDIR [OBJECT=FILE ...]")
    base, outdir = argv[1], argv[2]
    wanted = dict(a.split("=", 1) for a in argv[3:])
    os.makedirs(outdir, exist_ok=True)
    found = set()
    for name, value in objects(base):
        if wanted and name not in wanted:
            continue
        if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
            continue
        path = os.path.join(outdir, wanted.get(name, name + ".txt"))
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for line in value:
                f.write((line or "") + "\n")
        found.add(name)
        print(f"rdata-text: {path} ({len(value)} lines)")
    missing = set(wanted) - found
    if missing:
        sys.exit(f"rdata-text: {base}: no character vector named {', '.join(sorted(missing))}")


if __name__ == "__main__":
    main(sys.argv)
