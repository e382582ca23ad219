/*
 * measure/probe_int.h — the KL probe's interface to the measurement driver
 * (measure/probe.c). Internal to measure/.
 *
 *     meas_probe *p;
 *     probe_new(m, s, &calib, &p);          // reference log-probabilities, hp at layer 0
 *     for each layer l: { probe_tensor(p, cls, wq, &kld) for its tensors; probe_advance(p); }
 *     probe_tensor(p, RT_HEAD, wq, &kld);   // after the last layer
 *     probe_free(p);
 */
#ifndef BITPLAN_MEASURE_PROBE_INT_H
#define BITPLAN_MEASURE_PROBE_INT_H

#include "../runtime/runtime.h"
#include "measure.h"

typedef struct meas_probe meas_probe;

/* Runs the full-precision model over the probe rows (using state s, which must
 * hold MEAS_PROBE_CTX tokens) and keeps their log-probabilities. 0, or -1 if out
 * of memory (*out may be set: probe_free it). */
int probe_new(rt_model *m, rt_state *s, const calib_set *c, meas_probe **out);
void probe_free(meas_probe *p);
/* The layer whose input the kept hidden state is (n_layers: the head's). */
int probe_layer(const meas_probe *p);
/* Moves the kept hidden state through the current layer, unchanged weights. */
void probe_advance(meas_probe *p);
/* Mean KL(full || with the current layer's tensor cls replaced by wq[rows][cols]),
 * over the probe positions. Takes ownership of wq. 0, or -1 if out of memory. */
int probe_tensor(meas_probe *p, rt_class cls, float *wq, double *kld);

#endif
