/* Internal: what Apex's own code asks of tokens beyond include/apex/apex.h
 * (src/core/token.c). */
#ifndef APEX_CORE_TOKEN_INTERNAL_H
#define APEX_CORE_TOKEN_INTERNAL_H

#include "apex/apex.h"

/* As apex_token_new_child, marked shared: the token a parent's children
 * carry as theirs until one needs a token of its own (ops/children.c).
 * apex__task_token then makes that child one, linked below this.
 * Returns: as apex_token_new_child. Ownership: *out is the caller's (one
 * reference). Thread-safety: as apex_token_new_child. */
apex_status_t apex__token_new_shared(apex_token_t *parent, apex_token_t **out);
/* Returns: 1 if tok is a shared token not cancelled yet (a task that
 * carries it gets its own on demand), else 0. A cancelled shared token
 * serves as the task's own: one made now would be born cancelled with the
 * same reason ("parent"). Any thread, no lock. */
int apex__token_shared_open(const apex_token_t *tok);
/* Takes n references on tok at once (a family hands its children's out
 * from a batch: ops/children.c). Returns: tok. Any thread. */
apex_token_t *apex__token_ref_n(apex_token_t *tok, unsigned n);
/* Drops n references the caller holds on tok, as n apex_token_unref.
 * Any thread. */
void apex__token_unref_n(apex_token_t *tok, unsigned n);

#endif
