#ifndef DLM_SYSTEM_H
#define DLM_SYSTEM_H

/* What the C library offers that Swift's Glibc module does not: malloc tuning (malloc.h). */

/* Turns off glibc's fastbins (mallopt M_MXFAST 0): after many small frees, the first larger allocation
 * consolidates them, which stalled dlmd's event loop for tens of milliseconds after a large exit or purge
 * (bench/RESULTS.md). Returns mallopt's result: 1 on success. */
int dlm_disable_malloc_fastbins(void);

#endif
