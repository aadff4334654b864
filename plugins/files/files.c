/* files: real-work plugin for large local files. Two blocking actions:
 *
 *   checksum  digest of a file by OpenSSL EVP (sha256 by default), read in
 *             1 MiB chunks; progress by bytes, the bytes hashed as its partial
 *             result; cancellable within one chunk.
 *   copy      src -> dst through a temp file beside dst, fsync'd, verified
 *             by sha256 (src as read against the temp file read back) and
 *             renamed into place, so dst is either absent/old or complete,
 *             never partial; keeps src's permission bits; refuses to
 *             replace an existing dst unless overwrite=true (atomically:
 *             renameat2 RENAME_NOREPLACE, or link() where that is
 *             unsupported). Resumable: it checkpoints its offset, the temp
 *             file's identity and the hash state, and a later attempt (a
 *             retry, or after a crash of a durable host) copies only the
 *             rest (see "resumable copy" below).
 *
 * Threads: each call runs on one host worker and touches only its own fds,
 * buffer and EVP context; there is no plugin state.
 *
 * What can fail: open/read/write/fsync/rename (the task fails with
 * APEX_E_EXECUTION naming the path and strerror), an unsupported algorithm
 * (APEX_E_EXECUTION naming the allowed ones), out of memory (APEX_E_NOMEM),
 * cancellation (APEX_E_CANCELLED), a copy that fails verification
 * (APEX_E_EXECUTION, both digests named). A failed or cancelled copy removes
 * its temp file; only a crash leaves it, for the resumed attempt. Nothing here aborts or prints.
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

/* OpenSSL 3 deprecates the low-level digest calls (SHA256_CTX), which the
 * resumable copy needs to save a hash state (see "resumable copy"); they
 * remain in 3.x. Set before the first OpenSSL header. */
#ifndef OPENSSL_SUPPRESS_DEPRECATED
#define OPENSSL_SUPPRESS_DEPRECATED
#endif
#include <openssl/evp.h>
#include <openssl/sha.h>

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

/* ---- resumable copy
 * A copy is resumable (APEX_ACTION_F_RESUMABLE): after a crash of the host,
 * or on a retry, the next attempt continues from the last checkpoint
 * instead of byte zero. The checkpoint (apex_ctx_checkpoint), saved every
 * checkpoint_mib MiB once the temp file's bytes up to there are fdatasync'd:
 *   {"v": 1, "tmp": PATH, "tmp_dev": D, "tmp_ino": I, "offset": N,
 *    "src_dev": D, "src_ino": I, "src_size": S, "src_mtime_ns": T,
 *    "sha256": HEX}
 * tmp and its identity (device and inode: the same file, not one that took
 * its name since), the bytes copied, src's identity when the copy began
 * (a source that changed since cannot be resumed: its first N bytes may
 * differ), and the SHA-256 state over src's first N bytes (N is a multiple
 * of the 64-byte SHA-256 block, so the state is the eight chaining words).
 * A resumed attempt checks all of that, cuts tmp back to N and goes on; if
 * anything does not match it starts over (a temp file that is still ours
 * is removed first).
 *
 * Verified by content hash at the end: src's bytes are hashed as they are
 * read (so a resumed attempt reads only the rest of src), and once tmp is
 * complete it is read back and hashed (param verify, default true); the
 * copy is put in place only if the two SHA-256s match, and the result
 * carries the digest. The hash state is saved with OpenSSL's low-level
 * SHA256_CTX, the one SHA-256 API whose state can be read and restored
 * (EVP contexts are opaque); its chaining words are part of FIPS 180-4, not
 * of OpenSSL's layout. */

#define CHECKPOINT_MIB_DEFAULT 64

typedef struct copy_state {
  const char *src, *dst;
  char *tmp;      /* owned; NULL once placed, or when none is ours */
  int in, out;
  struct stat src_st;
  struct stat tmp_st;
  uint64_t offset; /* bytes of src copied into tmp */
  uint64_t resumed_from;
  SHA256_CTX sha;
} copy_state_t;

static void hex_encode(const unsigned char *p, size_t n, char *hex) {
  static const char k_hex[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    hex[2 * i] = k_hex[p[i] >> 4];
    hex[2 * i + 1] = k_hex[p[i] & 0xf];
  }
  hex[2 * n] = '\0';
}

#ifdef APEX_HAVE_CTX_CHECKPOINT
/* The eight chaining words of c as 64 hex digits, big-endian words. */
static void sha_state_hex(const SHA256_CTX *c, char hex[65]) {
  unsigned char b[32];
  for (int i = 0; i < 8; i++) {
    uint32_t w = (uint32_t)c->h[i];
    b[4 * i] = (unsigned char)(w >> 24);
    b[4 * i + 1] = (unsigned char)(w >> 16);
    b[4 * i + 2] = (unsigned char)(w >> 8);
    b[4 * i + 3] = (unsigned char)w;
  }
  hex_encode(b, 32, hex);
}

/* Restores c to the state after `bytes` bytes (a multiple of 64) whose
 * chaining words hex holds. Returns: 0, or -1 if hex is not 64 hex digits. */
static int sha_state_load(SHA256_CTX *c, const char *hex, uint64_t bytes) {
  if (!hex || strlen(hex) != 64 || bytes % SHA256_CBLOCK != 0) return -1;
  if (SHA256_Init(c) != 1) return -1;
  for (int i = 0; i < 8; i++) {
    uint32_t w = 0;
    for (int k = 0; k < 8; k++) {
      char ch = hex[8 * i + k];
      int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
      if (v < 0) return -1;
      w = (w << 4) | (uint32_t)v;
    }
    c->h[i] = w;
  }
  uint64_t bits = bytes * 8u;
  c->Nl = (SHA_LONG)(bits & 0xffffffffu);
  c->Nh = (SHA_LONG)(bits >> 32);
  c->num = 0;
  return 0;
}

static int64_t mtime_ns(const struct stat *st) {
  return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

#endif

/* Saves where the copy is. Returns: APEX_OK (also on a host without
 * checkpoints), or a failure (ctx failed). */
static int copy_checkpoint(apex_ctx_t *ctx, copy_state_t *c) {
#ifdef APEX_HAVE_CTX_CHECKPOINT
  char eb[128], hex[65];
  /* The bytes the checkpoint names must be on disk before it names them:
   * after a power loss a checkpoint past the file's end would resume into
   * a hole. */
  if (fdatasync(c->out) != 0)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot sync '%s': %s", c->tmp,
                         errstr(errno, eb, sizeof eb));
  sha_state_hex(&c->sha, hex);
  json_t *cp = json_pack("{s:i, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}", "v", 1, "tmp",
                         c->tmp, "tmp_dev", (json_int_t)c->tmp_st.st_dev, "tmp_ino",
                         (json_int_t)c->tmp_st.st_ino, "offset", (json_int_t)c->offset,
                         "src_dev", (json_int_t)c->src_st.st_dev, "src_ino",
                         (json_int_t)c->src_st.st_ino, "src_size", (json_int_t)c->src_st.st_size,
                         "src_mtime_ns", (json_int_t)mtime_ns(&c->src_st), "sha256", hex);
  if (!cp) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the checkpoint");
  int rc = apex_ctx_checkpoint(ctx, cp);
  json_decref(cp);
  /* APEX_E_INVALID: a host that keeps no checkpoints; the copy goes on
   * (a later attempt starts over). A store that failed to write one fails
   * the copy: it could not resume. */
  if (rc != APEX_OK && rc != APEX_E_INVALID)
    return apex_ctx_fail(ctx, rc, "cannot checkpoint the copy of '%s' at %llu bytes", c->src,
                         (unsigned long long)c->offset);
#else
  (void)ctx;
  (void)c;
#endif
  return APEX_OK;
}

#ifdef APEX_HAVE_CTX_CHECKPOINT
static json_int_t cp_int(const json_t *cp, const char *key) {
  json_t *v = json_object_get(cp, key);
  return json_is_integer(v) ? json_integer_value(v) : -1;
}

#endif

/* Picks up the temp file an earlier attempt checkpointed, if it is still
 * what the checkpoint says. Returns: 1 resumed (c->out open at c->offset,
 * c->tmp set, c->sha restored, src positioned), 0 nothing to resume (any
 * stale temp file of ours removed), or a failure (ctx failed). */
static int copy_resume(apex_ctx_t *ctx, copy_state_t *c) {
#ifdef APEX_HAVE_CTX_CHECKPOINT
  char eb[128];
  json_t *cp = apex_ctx_checkpoint_get(ctx); /* borrowed, for this attempt */
  if (!cp) return 0;
  int rc = 0;
  const char *why = NULL;
  json_t *tmpv = json_object_get(cp, "tmp");
  const char *tmp = json_string_value(tmpv);
  json_int_t off = cp_int(cp, "offset");
  if (cp_int(cp, "v") != 1 || !tmp || off < 0) {
    apex_ctx_log(ctx, APEX_LOG_INFO, "copy of '%s': the checkpoint is not one of ours; starting over",
                 c->src);
    goto out;
  }
  int fd = open(tmp, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    why = "the partial file is gone";
  } else if ((json_int_t)st.st_dev != cp_int(cp, "tmp_dev") ||
             (json_int_t)st.st_ino != cp_int(cp, "tmp_ino")) {
    why = "the partial file's name now belongs to another file";
  } else if ((json_int_t)c->src_st.st_dev != cp_int(cp, "src_dev") ||
             (json_int_t)c->src_st.st_ino != cp_int(cp, "src_ino") ||
             (json_int_t)c->src_st.st_size != cp_int(cp, "src_size") ||
             (json_int_t)mtime_ns(&c->src_st) != cp_int(cp, "src_mtime_ns")) {
    why = "the source changed since";
    (void)unlink(tmp); /* ours, by its identity: of no use now */
  } else if ((uint64_t)st.st_size < (uint64_t)off || (uint64_t)off > (uint64_t)c->src_st.st_size) {
    why = "the partial file is shorter than the checkpoint";
    (void)unlink(tmp);
  } else if (sha_state_load(&c->sha, json_string_value(json_object_get(cp, "sha256")),
                            (uint64_t)off) != 0) {
    why = "its hash state is unreadable";
    (void)unlink(tmp);
  }
  if (why) {
    if (fd >= 0) close(fd);
    apex_ctx_log(ctx, APEX_LOG_INFO, "copy of '%s': cannot resume from '%s' (%s); starting over",
                 c->src, tmp, why);
    goto out;
  }
  /* What was written past the checkpoint is not vouched for: cut it. */
  if (ftruncate(fd, off) != 0 || lseek(fd, off, SEEK_SET) != off ||
      lseek(c->in, off, SEEK_SET) != off) {
    int e = errno;
    close(fd);
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot resume the copy of '%s' at %lld: %s",
                       c->src, (long long)off, errstr(e, eb, sizeof eb));
    goto out;
  }
  c->tmp = strdup(tmp);
  if (!c->tmp) {
    close(fd);
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory copying '%s'", c->src);
    goto out;
  }
  c->out = fd;
  c->tmp_st = st;
  c->offset = c->resumed_from = (uint64_t)off;
  rc = 1;
  apex_ctx_log(ctx, APEX_LOG_INFO, "copy of '%s': resuming at byte %lld", c->src, (long long)off);
out:
  return rc;
#else
  (void)ctx;
  (void)c;
  return 0;
#endif
}

/* Creates the temp file in dst's directory (the rename must not cross file
 * systems) under a short name of its own, so a dst name near NAME_MAX
 * still works. Returns: APEX_OK, or a failure (ctx failed). */
static int copy_create_tmp(apex_ctx_t *ctx, copy_state_t *c) {
  char eb[128];
  const char *slash = strrchr(c->dst, '/');
  int dir_len = slash ? (int)(slash - c->dst) : 1;
  const char *dir = slash ? c->dst : ".";
  if (slash == c->dst) dir_len = 0; /* dst in "/": "" + "/.apex-tmp-..." */
  size_t tlen = (size_t)dir_len + sizeof "/.apex-tmp-XXXXXX";
  c->tmp = malloc(tlen);
  if (!c->tmp) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory copying '%s'", c->src);
  snprintf(c->tmp, tlen, "%.*s/.apex-tmp-XXXXXX", dir_len, dir);
  c->out = mkostemp(c->tmp, O_CLOEXEC);
  if (c->out < 0) {
    int e = errno;
    free(c->tmp);
    c->tmp = NULL; /* nothing to unlink */
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot create a temporary file beside '%s': %s",
                         c->dst, errstr(e, eb, sizeof eb));
  }
  /* Permission bits only, as cp without -p: a copy made by a privileged
   * host must not turn into a setuid or setgid file. */
  if (fchmod(c->out, c->src_st.st_mode & 0777) != 0 || fstat(c->out, &c->tmp_st) != 0)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot set up '%s': %s", c->tmp,
                         errstr(errno, eb, sizeof eb));
  if (SHA256_Init(&c->sha) != 1)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot start a sha256 digest");
  /* A checkpoint at 0 names the file at once, so a crash before the first
   * real one leaves no orphan: the resumed attempt picks it up. */
  return copy_checkpoint(ctx, c);
}

/* Reads tmp back from its start and compares its SHA-256 with want.
 * Returns: APEX_OK, or a failure (ctx failed). */
static int copy_verify(apex_ctx_t *ctx, copy_state_t *c, unsigned char *buf, const char *want) {
  char eb[128];
  SHA256_CTX v;
  if (SHA256_Init(&v) != 1)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot start a sha256 digest");
  (void)posix_fadvise(c->out, 0, 0, POSIX_FADV_SEQUENTIAL);
  uint64_t at = 0;
  for (;;) {
    if (apex_ctx_is_cancelled(ctx))
      return apex_ctx_fail(ctx, APEX_E_CANCELLED,
                           "copy of '%s' cancelled while verifying, after %llu bytes", c->src,
                           (unsigned long long)at);
    ssize_t n = pread(c->out, buf, CHUNK, (off_t)at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot read back '%s': %s", c->tmp,
                           errstr(errno, eb, sizeof eb));
    if (n == 0) break;
    SHA256_Update(&v, buf, (size_t)n);
    at += (uint64_t)n;
  }
  unsigned char dig[SHA256_DIGEST_LENGTH];
  char hex[2 * SHA256_DIGEST_LENGTH + 1];
  SHA256_Final(dig, &v);
  hex_encode(dig, sizeof dig, hex);
  if (at != c->offset || strcmp(hex, want) != 0)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION,
                         "copy of '%s' failed verification: the copy (%llu bytes) has sha256 "
                         "%s, the source read (%llu bytes) %s",
                         c->src, (unsigned long long)at, hex, (unsigned long long)c->offset, want);
  return APEX_OK;
}

static int copy(apex_ctx_t *ctx) {
  copy_state_t c = {.src = param_str(ctx, "src", NULL), .dst = param_str(ctx, "dst", NULL),
                    .in = -1, .out = -1};
  int overwrite = param_bool(ctx, "overwrite", 0);
  int verify = param_bool(ctx, "verify", 1);
  json_t *every_v = json_object_get(apex_ctx_params(ctx), "checkpoint_mib");
  uint64_t every = (uint64_t)(json_is_integer(every_v) && json_integer_value(every_v) > 0
                                  ? json_integer_value(every_v)
                                  : CHECKPOINT_MIB_DEFAULT) *
                   1024u * 1024u;
  char eb[128];
  if (!c.src || !c.dst)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "params 'src' and 'dst' are required");

  struct stat dst_st;
  if (!overwrite && lstat(c.dst, &dst_st) == 0)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION,
                         "'%s' already exists; pass overwrite=true to replace it", c.dst);

  c.in = open_regular(ctx, c.src, &c.src_st);
  if (c.in < 0) return c.in;
  (void)posix_fadvise(c.in, 0, 0, POSIX_FADV_SEQUENTIAL);

  int rc = copy_resume(ctx, &c);
  if (rc < 0) goto out;
  if (rc == 0 && (rc = copy_create_tmp(ctx, &c)) != APEX_OK) goto out;
  rc = APEX_OK;

  unsigned char *buf = malloc(CHUNK);
  if (!buf) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory copying '%s'", c.src);
    goto out;
  }
  uint64_t total = (uint64_t)c.src_st.st_size, last_cp = c.offset;
  report_bytes(ctx, c.offset, total, NULL);
  for (;;) {
    if (apex_ctx_is_cancelled(ctx)) {
      rc = apex_ctx_fail(ctx, APEX_E_CANCELLED, "copy of '%s' cancelled after %llu bytes", c.src,
                         (unsigned long long)c.offset);
      goto out_buf;
    }
    ssize_t n = read_some(c.in, buf, CHUNK);
    if (n < 0) {
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot read '%s': %s", c.src,
                         errstr(errno, eb, sizeof eb));
      goto out_buf;
    }
    if (n == 0) break;
    if (write_all(c.out, buf, (size_t)n) != 0) {
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot write '%s': %s", c.tmp,
                         errstr(errno, eb, sizeof eb));
      goto out_buf;
    }
    SHA256_Update(&c.sha, buf, (size_t)n);
    c.offset += (uint64_t)n;
    /* Only on a block boundary, where the saved state is whole (a short
     * read mid-file, which regular files do not give, just defers it). */
    if (c.offset - last_cp >= every && c.offset % SHA256_CBLOCK == 0) {
      if ((rc = copy_checkpoint(ctx, &c)) != APEX_OK) goto out_buf;
      last_cp = c.offset;
    }
    publish_hashed(ctx, c.offset, total);
    report_bytes(ctx, c.offset, total, NULL);
  }

  unsigned char dig[SHA256_DIGEST_LENGTH];
  char hex[2 * SHA256_DIGEST_LENGTH + 1];
  SHA256_Final(dig, &c.sha);
  hex_encode(dig, sizeof dig, hex);
  if (fsync(c.out) != 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot fsync '%s': %s", c.tmp,
                       errstr(errno, eb, sizeof eb));
    goto out_buf;
  }
  if (verify && (rc = copy_verify(ctx, &c, buf, hex)) != APEX_OK) goto out_buf;
  int cr = close(c.out);
  c.out = -1;
  if (cr != 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot close '%s': %s", c.tmp,
                       errstr(errno, eb, sizeof eb));
    goto out_buf;
  }
  if (apex_ctx_is_cancelled(ctx)) { /* e.g. a deadline that passed during fsync */
    rc = apex_ctx_fail(ctx, APEX_E_CANCELLED, "copy of '%s' cancelled before it was put in place",
                       c.src);
    goto out_buf;
  }
  if (place(c.tmp, c.dst, overwrite) != 0) {
    if (errno == EEXIST)
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION,
                         "'%s' already exists; pass overwrite=true to replace it", c.dst);
    else
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot rename '%s' to '%s': %s", c.tmp, c.dst,
                         errstr(errno, eb, sizeof eb));
    goto out_buf;
  }
  free(c.tmp);
  c.tmp = NULL; /* it is dst now */
  if (sync_parent(c.dst) != 0)
    apex_ctx_log(ctx, APEX_LOG_WARN, "copied '%s' but could not fsync its directory: %s", c.dst,
                 errstr(errno, eb, sizeof eb));

  json_t *result = json_pack("{s:s, s:s, s:I, s:s, s:I}", "src", c.src, "dst", c.dst, "bytes",
                             (json_int_t)c.offset, "sha256", hex, "resumed_from",
                             (json_int_t)c.resumed_from);
  if (!result) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result");
    goto out_buf;
  }
  apex_ctx_set_result(ctx, result);
  report_bytes(ctx, c.offset, total, "completed");

out_buf:
  free(buf);
out:
  if (c.out >= 0) close(c.out);
  if (c.tmp) {
    (void)unlink(c.tmp); /* no partial file is left behind */
    free(c.tmp);
  }
  close(c.in);
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
    {.name = "verify", .type = APEX_PARAM_BOOL, .default_json = "true",
     .description = "read the copy back and compare its sha256 with the source's before "
                    "putting it in place"},
    {.name = "checkpoint_mib", .type = APEX_PARAM_INT, .default_json = "64", .has_min = 1,
     .min = 1, .has_max = 1, .max = 1048576,
     .description = "save a resume point every this many MiB copied"},
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
        .description = "Copies a file through a temp file, verified by sha256, and an atomic "
                       "rename; never leaves a partial destination; resumes after a crash",
        .handler = copy,
        .kind = APEX_ACTION_BLOCKING,
        .params = k_copy_params,
        .n_params = sizeof k_copy_params / sizeof k_copy_params[0],
#ifdef APEX_ACTION_F_RESUMABLE
        .flags = APEX_ACTION_F_RESUMABLE,
#endif
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
