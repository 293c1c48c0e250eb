/*
** error.c - the context's error slot and shape formatting for messages.
*/
#include "mg_impl.h"

#include <stdio.h>

mg_status mg_fail(mg_ctx *C, mg_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(C->errmsg, sizeof C->errmsg, fmt, ap);
  va_end(ap);
  return st;
}

const char *mg_errmsg(const mg_ctx *C) { return C->errmsg; }

bool mg_error_named(const char *msg) {
  const char *sp = strchr(msg, ' ');
  return sp != NULL && sp > msg && sp[-1] == ':';
}

mg_status mg_name_error(mg_ctx *C, mg_status st, const char *op) {
  if (st == MG_OK || mg_error_named(C->errmsg)) return st;
  size_t n = strlen(op) + 2, len = strlen(C->errmsg);
  if (n >= sizeof C->errmsg) return st;
  if (len > sizeof C->errmsg - 1 - n) len = sizeof C->errmsg - 1 - n;   /* truncate the tail */
  memmove(C->errmsg + n, C->errmsg, len);
  C->errmsg[n + len] = '\0';
  memcpy(C->errmsg, op, n - 2);
  C->errmsg[n - 2] = ':';
  C->errmsg[n - 1] = ' ';
  return st;
}

char *mg_shapestr(char *buf, size_t n, int ndim, const int64_t *shape) {
  size_t k = 0;
  k += (size_t)snprintf(buf, n, "(");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ",%lld" : "%lld", (long long)shape[i]);
  if (k < n) snprintf(buf + k, n - k, ")");
  return buf;
}
