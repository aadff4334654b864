/* files: real-work plugin for large local files. Two blocking actions:
 *
 *   checksum  digest of a file by OpenSSL EVP (sha256 by default), read in
 *             1 MiB chunks; progress by bytes, the bytes hashed as its partial
 *             result; cancellable within one chunk.
 *   copy      src -> dst through a temp file beside dst, fsync'd and renamed
 *             into place, so dst is either absent/old or complete, never
 *             partial; keeps src's permission bits; refuses to replace an
 *             existing dst unless overwrite=true (atomically: renameat2
 *             RENAME_NOREPLACE, or link() where that is unsupported).
 *
 * Threads: each call runs on one host worker and touches only its own fds,
 * buffer and EVP context; there is no plugin state.
 *
 * What can fail: open/read/write/fsync/rename (the task fails with
 * APEX_E_EXECUTION naming the path and strerror), an unsupported algorithm
 * (APEX_E_EXECUTION naming the allowed ones), out of memory (APEX_E_NOMEM),
 * cancellation (APEX_E_CANCELLED). A failed or cancelled copy removes its
 * temp file. Nothing here aborts or prints.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "apex/plugin.h"

/* Big enough that per-chunk work (progress, cancel check, syscall) is noise
 * next to hashing; small enough that a cancel lands within a millisecond or
 * so at memory speed. */
#define CHUNK (1u << 20)

/* Canonical names; EVP knows each of them by exactly this spelling. */
static const char *const k_algorithms[] = {"sha256",   "sha512",    "sha1",
                                           "md5",      "sha3-256",  "blake2b512"};
#define N_ALGORITHMS (sizeof k_algorithms / sizeof k_algorithms[0])
#define ALGORITHM_LIST "sha256, sha512, sha1, md5, sha3-256, blake2b512"

/* ---------------------------------------------------------------- helpers */

static const char *param_str(apex_ctx_t *ctx, const char *name, const char *dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_string(v) ? json_string_value(v) : dflt;
}

static int param_bool(apex_ctx_t *ctx, const char *name, int dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* GNU strerror_r (we define _GNU_SOURCE): returns the message, thread-safe. */
static const char *errstr(int e, char *buf, size_t len) { return strerror_r(e, buf, len); }

/* Opens path for reading without blocking on a FIFO and checks that it is a
 * regular file. Returns: the fd, or a negative apex code after failing ctx. */
static int open_regular(apex_ctx_t *ctx, const char *path, struct stat *st) {
  char eb[128];
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot open '%s': %s", path,
                         errstr(errno, eb, sizeof eb));
  if (fstat(fd, st) != 0) {
    int e = errno;
    close(fd);
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot stat '%s': %s", path,
                         errstr(e, eb, sizeof eb));
  }
  if (!S_ISREG(st->st_mode)) {
    close(fd);
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "'%s' is not a regular file", path);
  }
  /* O_NONBLOCK only guarded the open; clear it so reads behave normally. */
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
    int e = errno;
    close(fd);
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot set flags of '%s': %s", path,
                         errstr(e, eb, sizeof eb));
  }
  return fd;
}

/* read() that retries EINTR. Returns: bytes read, 0 at EOF, -1 with errno. */
static ssize_t read_some(int fd, void *buf, size_t len) {
  for (;;) {
    ssize_t n = read(fd, buf, len);
    if (n >= 0 || errno != EINTR) return n;
  }
}

/* Progress by bytes; status NULL while running, "completed" for the last
 * report, which is 100 even if the file changed size while read. */
static void report_bytes(apex_ctx_t *ctx, uint64_t done, uint64_t total, const char *status) {
  double pct = total > 0 ? 100.0 * (double)done / (double)total : 100.0;
  if (pct > 100.0 || status) pct = 100.0;
  char msg[96];
  snprintf(msg, sizeof msg, "%.1f MiB of %.1f MiB", (double)done / (1024.0 * 1024.0),
           (double)total / (1024.0 * 1024.0));
  json_t *details = json_pack("{s:I, s:I}", "bytes_done", (json_int_t)done, "bytes_total",
                              (json_int_t)total);
  apex_progress_update_t u = {
      .percentage = pct, .message = msg, .status = status, .details = details};
  /* Without memory for details the plain update still informs. */
  (void)apex_ctx_progress_update(ctx, &u);
  json_decref(details);
}

/* -------------------------------------------------------------- checksum */

/* Publishes {"bytes_hashed": done, "bytes_total": total} as the task's
 * partial result: what a cancelled or failed checksum got through (a host
 * without apex_ctx_partial_result just does not get it). Per chunk; the
 * host coalesces, and the publish allocates nothing once warm. */
static void publish_hashed(apex_ctx_t *ctx, uint64_t done, uint64_t total) {
#ifdef APEX_HAVE_CTX_PARTIAL_RESULT
  json_t *p = json_pack("{s:I, s:I}", "bytes_hashed", (json_int_t)done, "bytes_total",
                        (json_int_t)total);
  if (p) (void)apex_ctx_partial_result(ctx, p); /* without memory: none, the work goes on */
  json_decref(p);
#else
  (void)ctx;
  (void)done;
  (void)total;
#endif
}

static int checksum(apex_ctx_t *ctx) {
  const char *path = param_str(ctx, "path", NULL);
  const char *alg_in = param_str(ctx, "algorithm", "sha256");
  char eb[128];
  if (!path) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "param 'path' is missing");

  const char *alg = NULL;
  for (size_t i = 0; i < N_ALGORITHMS; i++)
    if (strcasecmp(alg_in, k_algorithms[i]) == 0) alg = k_algorithms[i];
  if (!alg)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "algorithm '%s' is not supported (one of: %s)",
                         alg_in, ALGORITHM_LIST);
  const EVP_MD *md = EVP_get_digestbyname(alg);
  if (!md)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "algorithm '%s' is not available in this OpenSSL",
                         alg);

  struct stat st;
  int fd = open_regular(ctx, path, &st);
  if (fd < 0) return fd;
  (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL); /* a hint: failure changes nothing */

  int rc = APEX_OK;
  uint64_t total = (uint64_t)st.st_size, done = 0;
  unsigned char *buf = malloc(CHUNK);
  EVP_MD_CTX *mdctx = EVP_MD_CTX_new();
  if (!buf || !mdctx) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory hashing '%s'", path);
    goto out;
  }
  if (EVP_DigestInit_ex(mdctx, md, NULL) != 1) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot start a %s digest", alg);
    goto out;
  }
  report_bytes(ctx, 0, total, NULL);
  for (;;) {
    if (apex_ctx_is_cancelled(ctx)) {
      rc = apex_ctx_fail(ctx, APEX_E_CANCELLED, "checksum of '%s' cancelled after %llu bytes",
                         path, (unsigned long long)done);
      goto out;
    }
    ssize_t n = read_some(fd, buf, CHUNK);
    if (n < 0) {
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot read '%s': %s", path,
                         errstr(errno, eb, sizeof eb));
      goto out;
    }
    if (n == 0) break;
    if (EVP_DigestUpdate(mdctx, buf, (size_t)n) != 1) {
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s digest update failed", alg);
      goto out;
    }
    done += (uint64_t)n;
    publish_hashed(ctx, done, total);
    report_bytes(ctx, done, total, NULL);
  }

  unsigned char dig[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  if (EVP_DigestFinal_ex(mdctx, dig, &dlen) != 1) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s digest final failed", alg);
    goto out;
  }
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  static const char k_hex[] = "0123456789abcdef";
  for (unsigned int i = 0; i < dlen; i++) {
    hex[2 * i] = k_hex[dig[i] >> 4];
    hex[2 * i + 1] = k_hex[dig[i] & 0xf];
  }
  hex[2 * dlen] = '\0';
  json_t *result = json_pack("{s:s, s:s, s:s, s:I}", "path", path, "algorithm", alg, "digest",
                             hex, "bytes", (json_int_t)done);
  if (!result) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result");
    goto out;
  }
  apex_ctx_set_result(ctx, result);
  report_bytes(ctx, done, total, "completed");

out:
  EVP_MD_CTX_free(mdctx);
  free(buf);
  close(fd);
  return rc;
}

/* ------------------------------------------------------------------ copy */

/* write() all of buf, retrying EINTR and short writes. Returns 0 or -1. */
static int write_all(int fd, const unsigned char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Moves tmp to dst. Without overwrite the move must fail if dst appeared
 * meanwhile, so the existence check before copying cannot be raced. Returns 0
 * or -1 with errno. */
static int place(const char *tmp, const char *dst, int overwrite) {
  if (overwrite) return rename(tmp, dst);
  if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dst, RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) return -1;
  /* Filesystems without RENAME_NOREPLACE: link() fails with EEXIST too. */
  if (link(tmp, dst) != 0) return -1;
  (void)unlink(tmp); /* dst is complete; a stray tmp name is only untidy */
  return 0;
}

/* fsync the directory holding path, so the rename survives a crash. */
static int sync_parent(const char *path) {
  char *copy = strdup(path);
  if (!copy) return -1;
  int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(copy);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

static int copy(apex_ctx_t *ctx) {
  const char *src = param_str(ctx, "src", NULL);
  const char *dst = param_str(ctx, "dst", NULL);
  int overwrite = param_bool(ctx, "overwrite", 0);
  char eb[128];
  if (!src || !dst) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "params 'src' and 'dst' are required");

  struct stat dst_st;
  if (!overwrite && lstat(dst, &dst_st) == 0)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION,
                         "'%s' already exists; pass overwrite=true to replace it", dst);

  struct stat st;
  int in = open_regular(ctx, src, &st);
  if (in < 0) return in;
  (void)posix_fadvise(in, 0, 0, POSIX_FADV_SEQUENTIAL);

  int rc = APEX_OK, out = -1;
  unsigned char *buf = NULL;
  /* The temp file goes in dst's directory (the rename must not cross file
   * systems) under a short name of its own, so a dst name near NAME_MAX
   * still works. */
  const char *slash = strrchr(dst, '/');
  int dir_len = slash ? (int)(slash - dst) : 1;
  const char *dir = slash ? dst : ".";
  if (slash == dst) dir_len = 0; /* dst in "/": "" + "/.apex-tmp-..." */
  size_t tlen = (size_t)dir_len + sizeof "/.apex-tmp-XXXXXX";
  char *tmp = malloc(tlen);
  if (!tmp) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory copying '%s'", src);
    goto out;
  }
  snprintf(tmp, tlen, "%.*s/.apex-tmp-XXXXXX", dir_len, dir);
  out = mkostemp(tmp, O_CLOEXEC);
  if (out < 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot create a temporary file beside '%s': %s",
                       dst, errstr(errno, eb, sizeof eb));
    free(tmp);
    tmp = NULL; /* nothing to unlink */
    goto out;
  }
  /* Permission bits only, as cp without -p: a copy made by a privileged
   * host must not turn into a setuid or setgid file. */
  if (fchmod(out, st.st_mode & 0777) != 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot set the mode of '%s': %s", tmp,
                       errstr(errno, eb, sizeof eb));
    goto out;
  }

  uint64_t total = (uint64_t)st.st_size, done = 0;
  int use_cfr = 1; /* in-kernel copy (reflinks where the fs can) until refused */
  report_bytes(ctx, 0, total, NULL);
  for (;;) {
    if (apex_ctx_is_cancelled(ctx)) {
      rc = apex_ctx_fail(ctx, APEX_E_CANCELLED, "copy of '%s' cancelled after %llu bytes", src,
                         (unsigned long long)done);
      goto out;
    }
    ssize_t n;
    if (use_cfr) {
      n = copy_file_range(in, NULL, out, NULL, CHUNK, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL ||
                    errno == EOPNOTSUPP || errno == EBADF)) {
        use_cfr = 0; /* file offsets moved only by what was copied: resume there */
        continue;
      }
      if (n < 0) {
        rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot copy '%s' to '%s': %s", src, tmp,
                           errstr(errno, eb, sizeof eb));
        goto out;
      }
      if (n == 0 && done == 0) {
        /* Some kernels report 0 at once for files whose size they cannot
         * tell (procfs, sysfs): let read() confirm the end. */
        use_cfr = 0;
        continue;
      }
    } else {
      if (!buf && !(buf = malloc(CHUNK))) {
        rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory copying '%s'", src);
        goto out;
      }
      n = read_some(in, buf, CHUNK);
      if (n < 0) {
        rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot read '%s': %s", src,
                           errstr(errno, eb, sizeof eb));
        goto out;
      }
      if (n > 0 && write_all(out, buf, (size_t)n) != 0) {
        rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot write '%s': %s", tmp,
                           errstr(errno, eb, sizeof eb));
        goto out;
      }
    }
    if (n == 0) break;
    done += (uint64_t)n;
    publish_hashed(ctx, done, total);
    report_bytes(ctx, done, total, NULL);
  }

  if (fsync(out) != 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot fsync '%s': %s", tmp,
                       errstr(errno, eb, sizeof eb));
    goto out;
  }
  int cr = close(out);
  out = -1;
  if (cr != 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot close '%s': %s", tmp,
                       errstr(errno, eb, sizeof eb));
    goto out;
  }
  if (apex_ctx_is_cancelled(ctx)) { /* e.g. a deadline that passed during fsync */
    rc = apex_ctx_fail(ctx, APEX_E_CANCELLED, "copy of '%s' cancelled before it was put in place",
                       src);
    goto out;
  }
  if (place(tmp, dst, overwrite) != 0) {
    if (errno == EEXIST)
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION,
                         "'%s' already exists; pass overwrite=true to replace it", dst);
    else
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot rename '%s' to '%s': %s", tmp, dst,
                         errstr(errno, eb, sizeof eb));
    goto out;
  }
  free(tmp);
  tmp = NULL; /* it is dst now */
  if (sync_parent(dst) != 0)
    apex_ctx_log(ctx, APEX_LOG_WARN, "copied '%s' but could not fsync its directory: %s", dst,
                 errstr(errno, eb, sizeof eb));

  json_t *result = json_pack("{s:s, s:s, s:I}", "src", src, "dst", dst, "bytes",
                             (json_int_t)done);
  if (!result) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result");
    goto out;
  }
  apex_ctx_set_result(ctx, result);
  report_bytes(ctx, done, total, "completed");

out:
  if (out >= 0) close(out);
  if (tmp) {
    (void)unlink(tmp); /* no partial file is left behind */
    free(tmp);
  }
  free(buf);
  close(in);
  return rc;
}

/* ------------------------------------------------------------ descriptor */

static const apex_param_spec_t k_checksum_params[] = {
    {.name = "path", .type = APEX_PARAM_STRING, .required = 1, .has_min = 1, .min = 1,
     .description = "file to digest"},
    {.name = "algorithm", .type = APEX_PARAM_STRING, .default_json = "\"sha256\"",
     .description = "one of " ALGORITHM_LIST},
};

static const apex_param_spec_t k_copy_params[] = {
    {.name = "src", .type = APEX_PARAM_STRING, .required = 1, .has_min = 1, .min = 1,
     .description = "file to copy"},
    {.name = "dst", .type = APEX_PARAM_STRING, .required = 1, .has_min = 1, .min = 1,
     .description = "where the copy goes (written via a temp file, then renamed)"},
    {.name = "overwrite", .type = APEX_PARAM_BOOL, .default_json = "false",
     .description = "replace dst if it exists"},
};

static const apex_action_desc_t k_actions[] = {
    {
        .name = "checksum",
        .description = "Digest of a file (sha256, sha512, sha1, md5, sha3-256, blake2b512), "
                       "with progress by bytes",
        .handler = checksum,
        .kind = APEX_ACTION_BLOCKING,
        .params = k_checksum_params,
        .n_params = sizeof k_checksum_params / sizeof k_checksum_params[0],
        .flags = APEX_ACTION_F_IDEMPOTENT,
    },
    {
        .name = "copy",
        .description = "Copies a file through a temp file and an atomic rename; never leaves "
                       "a partial destination",
        .handler = copy,
        .kind = APEX_ACTION_BLOCKING,
        .params = k_copy_params,
        .n_params = sizeof k_copy_params / sizeof k_copy_params[0],
    },
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "files",
    .version = "1.0.0",
    .description = "File checksums and safe copies with progress and cancellation",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
