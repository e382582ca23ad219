/*
 * measure/probe_int.h — the KL probe's interface to the measurement driver
 * (measure/probe.c). Internal to measure/.
 *
 *     meas_probe *p;
 *     probe_new(m, &calib, &p);             // reference log-probabilities, hp at layer 0
 *     for each layer l: { probe_tensors(p, n, cls, wq, kld) for its tensors; probe_advance(p); }
 *     probe_tensors(p, 1, &head, wq, kld);  // after the last layer
 *     probe_free(p);
 *
 * The model is opened over its file (rt_model_open): the probe holds the layers it
 * runs one at a time.
 */
#ifndef BITPLAN_MEASURE_PROBE_INT_H
#define BITPLAN_MEASURE_PROBE_INT_H

#include "runtime/runtime.h"
#include "measure.h"

typedef struct meas_probe meas_probe;

/* Runs the full-precision model over the probe rows and keeps their
 * log-probabilities. 0, or -1 if out of memory (*out may be set: probe_free it). */
int probe_new(rt_model *m, const calib_set *c, meas_probe **out);
void probe_free(meas_probe *p);
/* The layer whose input the kept hidden state is (n_layers: the head's). */
int probe_layer(const meas_probe *p);
/* Moves the kept hidden state through the current layer, unchanged weights. 0, or
 * -1 if out of memory. */
int probe_advance(meas_probe *p);
/* For k < n: kld[k] = mean KL(full || with the current layer's tensor cls[k] alone
 * replaced by wq[k][rows][cols]) over the probe positions (n at most
 * LAY_N_CLASSES, distinct classes). Takes ownership of every wq[k]. 0, or -1 if
 * out of memory. */
int probe_tensors(meas_probe *p, int n, const lay_class *cls, float *const *wq, double *kld);

#endif
