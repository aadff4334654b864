/* Integration tests of the shipped `files` plugin (plugins/files/files.c),
 * loaded from the build tree and driven through the public host API only:
 * checksum (known digests for every algorithm, case-insensitive names,
 * failures naming the path or the allowed algorithms, progress by bytes,
 * prompt cancellation mid-file) and copy (content and mode, no overwrite
 * unless asked, nothing left behind after a cancel, a failure or a timeout).
 *
 * Every test gets its own mkdtemp directory and manager (LOOP delivery into a
 * small recorder that copies progress details under its mutex, so assertions
 * run on the test thread). Large inputs are sparse files: ftruncate'd, so they
 * cost no disk, yet the plugin reads (and hashes or copies) every byte.
 *
 * Threads: the test thread, and Apex's runtime thread running the recorder. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"

#define FILES_SO APEX_PLUGIN_BUILD_DIR "/files.so"
#define ALGORITHM_LIST "sha256, sha512, sha1, md5, sha3-256, blake2b512"
/* Big enough that neither hashing (sha3-256, the slowest) nor copying it
 * finishes between the first progress event and the cancel or deadline. */
#define LARGE_SIZE (1LL << 30)
#define MIB (1024 * 1024)

/* ---------------------------------------------------------------- recorder */

typedef struct rec_prog {
  uint64_t task_id;
  double pct;
  char status[32];
  json_int_t bytes_done, bytes_total; /* -1 when absent */
} rec_prog_t;

typedef struct rec {
  pthread_mutex_t mu;
  rec_prog_t *ev;
  size_t n, cap;
  size_t dones;
} rec_t;

static void rec_on_event(const apex_event_t *ev, void *user) {
  rec_t *r = user;
  pthread_mutex_lock(&r->mu);
  if (ev->type == APEX_EVENT_DONE) {
    r->dones++;
  } else if (ev->type == APEX_EVENT_PROGRESS) {
    if (r->n == r->cap) {
      size_t cap = r->cap ? r->cap * 2 : 256;
      rec_prog_t *p = realloc(r->ev, cap * sizeof *p);
      if (!p) abort(); /* test code: out of memory is fatal */
      r->ev = p;
      r->cap = cap;
    }
    const json_t *d = apex_progress_details(ev->progress);
    json_t *done = json_object_get(d, "bytes_done"), *total = json_object_get(d, "bytes_total");
    rec_prog_t *e = &r->ev[r->n++];
    e->task_id = ev->task_id;
    e->pct = apex_progress_percentage(ev->progress);
    snprintf(e->status, sizeof e->status, "%s", apex_progress_status(ev->progress));
    e->bytes_done = json_is_integer(done) ? json_integer_value(done) : -1;
    e->bytes_total = json_is_integer(total) ? json_integer_value(total) : -1;
  }
  pthread_mutex_unlock(&r->mu);
}

/* Progress events recorded for task id whose bytes_done exceeds min. */
static size_t rec_progress_past(rec_t *r, uint64_t id, json_int_t min) {
  size_t c = 0;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n; i++)
    if (r->ev[i].task_id == id && r->ev[i].bytes_done > min) c++;
  pthread_mutex_unlock(&r->mu);
  return c;
}

static size_t rec_dones(rec_t *r) {
  pthread_mutex_lock(&r->mu);
  size_t n = r->dones;
  pthread_mutex_unlock(&r->mu);
  return n;
}

/* ----------------------------------------------------------------- fixture */

typedef struct fx {
  char dir[64];
  rec_t rec;
  apex_manager_t *m;
} fx_t;

static int setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  snprintf(f->dir, sizeof f->dir, "/tmp/apex-files-test-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  assert_int_equal(pthread_mutex_init(&f->rec.mu, NULL), 0);
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = 2;
  cfg.log = quiet_log;
  cfg.on_event = rec_on_event;
  cfg.event_user = &f->rec;
  cfg.event_mask = APEX_EVENT_PROGRESS | APEX_EVENT_DONE;
  cfg.delivery = APEX_DELIVER_LOOP;
  assert_int_equal(apex_manager_new(&cfg, &f->m), APEX_OK);
  load_ok(f->m, FILES_SO);
  *state = f;
  return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int teardown(void **state) {
  fx_t *f = *state;
  assert_int_equal(apex_manager_destroy(f->m, 5000), APEX_OK);
  free(f->rec.ev);
  pthread_mutex_destroy(&f->rec.mu);
  /* A chmod 000 test file is removable: only the directory's mode counts. */
  assert_int_equal(nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
  free(f);
  return 0;
}

/* ----------------------------------------------------------------- helpers */

/* out = the fixture's directory / name. */
static void join(char *out, size_t len, const fx_t *f, const char *name) {
  int n = snprintf(out, len, "%s/%s", f->dir, name);
  assert_true(n > 0 && (size_t)n < len);
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, data, len), (ssize_t)len);
  assert_int_equal(fchmod(fd, mode), 0); /* exact, whatever the umask */
  assert_int_equal(close(fd), 0);
}

/* A sparse file of `size` bytes with a little data at the start, middle
 * and end, so it is not all one hole. */
static void make_large(const char *path, off_t size) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, size), 0);
  const off_t at[] = {0, size / 2, size - 4};
  for (size_t i = 0; i < 3; i++) assert_int_equal(pwrite(fd, "apex", 4, at[i]), 4);
  assert_int_equal(close(fd), 0);
}

/* Reads a whole small file into buf (NUL-terminated). Returns its size. */
static size_t read_file(const char *path, char *buf, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  assert_true(fd >= 0);
  ssize_t n = read(fd, buf, len - 1);
  assert_true(n >= 0);
  buf[n] = '\0';
  close(fd);
  return (size_t)n;
}

static int dot_filter(const struct dirent *d) {
  return strcmp(d->d_name, ".") != 0 && strcmp(d->d_name, "..") != 0;
}

/* The directory's entries, sorted, comma-separated: asserting it equal to
 * "src" says at once that no dst and no *.apex-tmp-* file is left. */
static void listing(const char *dir, char *out, size_t len) {
  struct dirent **ents = NULL;
  int n = scandir(dir, &ents, dot_filter, alphasort);
  assert_true(n >= 0);
  out[0] = '\0';
  for (int i = 0; i < n; i++) {
    size_t used = strlen(out);
    snprintf(out + used, len - used, "%s%s", i ? "," : "", ents[i]->d_name);
    free(ents[i]);
  }
  free(ents);
}

/* Submits files.action and waits for the end. Returns the task (release). */
static apex_task_t *run(fx_t *f, const char *action, json_t *params,
                        const apex_submit_opts_t *opts) {
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(f->m, "files", action, params, opts, &t, &err);
  if (rc != APEX_OK) print_error("submit files.%s: %s\n", action, apex_error_message(err));
  apex_error_unref(err);
  json_decref(params);
  assert_int_equal(rc, APEX_OK);
  assert_int_equal(apex_task_wait(t, 30000), APEX_OK);
  return t;
}

static apex_task_t *checksum(fx_t *f, const char *path, const char *alg) {
  json_t *p = alg ? json_pack("{s:s, s:s}", "path", path, "algorithm", alg)
                  : json_pack("{s:s}", "path", path);
  assert_non_null(p);
  return run(f, "checksum", p, NULL);
}

/* Asserts t failed with code and a message containing every non-NULL part. */
static void assert_failed(apex_task_t *t, apex_task_state_t state, int code, const char *part1,
                          const char *part2) {
  assert_string_equal(apex_task_state_name(apex_task_state(t)), apex_task_state_name(state));
  apex_error_t *e = apex_task_error(t);
  assert_non_null(e);
  const char *msg = apex_error_message(e);
  if (apex_error_code(e) != code || (part1 && !strstr(msg, part1)) ||
      (part2 && !strstr(msg, part2)))
    print_error("error %s: %s\n", apex_status_name(apex_error_code(e)), msg);
  assert_int_equal(apex_error_code(e), code);
  if (part1) assert_non_null(strstr(msg, part1));
  if (part2) assert_non_null(strstr(msg, part2));
  apex_error_unref(e);
}

/* ---------------------------------------------------------------- checksum */

typedef struct vector {
  const char *alg, *empty, *abc;
} vector_t;

static const vector_t k_vectors[] = {
    {"sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
    {"sha512",
     "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d28"
     "77eec2f63b931bd47417a81a538327af927da3e",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a"
     "3feebbd454d4423643ce80e2a9ac94fa54ca49f"},
    {"sha1", "da39a3ee5e6b4b0d3255bfef95601890afd80709",
     "a9993e364706816aba3e25717850c26c9cd0d89d"},
    {"md5", "d41d8cd98f00b204e9800998ecf8427e", "900150983cd24fb0d6963f7d28e17f72"},
    {"sha3-256", "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a",
     "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"},
    {"blake2b512",
     "786a02f742015903c6c6fd852552d272912f4740e15847618a86e217f71f5419d25e1031afee585313896444"
     "934eb04b903a685b1448b755d56f701afe9be2ce",
     "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de"
     "4533cc9518d38aa8dbf1925ab92386edd4009923"},
};

/* Asserts t succeeded with exactly {path, algorithm, digest, bytes}. */
static void assert_digest(apex_task_t *t, const char *path, const char *alg, const char *hex,
                          json_int_t bytes) {
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_non_null(r);
  assert_int_equal(json_object_size(r), 4);
  assert_string_equal(json_string_value(json_object_get(r, "path")), path);
  assert_string_equal(json_string_value(json_object_get(r, "algorithm")), alg);
  assert_string_equal(json_string_value(json_object_get(r, "digest")), hex);
  assert_true(json_is_integer(json_object_get(r, "bytes")));
  assert_int_equal(json_integer_value(json_object_get(r, "bytes")), bytes);
  json_decref(r);
}

static void test_checksum_matches_known_digests_for_every_algorithm(void **state) {
  fx_t *f = *state;
  char empty[128], abc[128];
  join(empty, sizeof empty, f, "empty");
  join(abc, sizeof abc, f, "abc");
  write_file(empty, "", 0, 0644);
  write_file(abc, "abc", 3, 0644);
  for (size_t i = 0; i < sizeof k_vectors / sizeof k_vectors[0]; i++) {
    const vector_t *v = &k_vectors[i];
    apex_task_t *t = checksum(f, empty, v->alg);
    assert_digest(t, empty, v->alg, v->empty, 0);
    apex_task_release(t);
    t = checksum(f, abc, v->alg);
    assert_digest(t, abc, v->alg, v->abc, 3);
    apex_task_release(t);
  }
}

static void test_checksum_defaults_to_sha256(void **state) {
  fx_t *f = *state;
  char abc[128];
  join(abc, sizeof abc, f, "abc");
  write_file(abc, "abc", 3, 0644);
  apex_task_t *t = checksum(f, abc, NULL);
  assert_digest(t, abc, "sha256", k_vectors[0].abc, 3);
  apex_task_release(t);
}

static void test_checksum_algorithm_name_is_case_insensitive(void **state) {
  fx_t *f = *state;
  char abc[128];
  join(abc, sizeof abc, f, "abc");
  write_file(abc, "abc", 3, 0644);
  apex_task_t *t = checksum(f, abc, "SHA3-256");
  assert_digest(t, abc, "sha3-256", k_vectors[4].abc, 3); /* reported canonically */
  apex_task_release(t);
  t = checksum(f, abc, "Blake2B512");
  assert_digest(t, abc, "blake2b512", k_vectors[5].abc, 3);
  apex_task_release(t);
}

static void test_checksum_unknown_algorithm_fails_naming_the_supported_ones(void **state) {
  fx_t *f = *state;
  char abc[128];
  join(abc, sizeof abc, f, "abc");
  write_file(abc, "abc", 3, 0644);
  apex_task_t *t = checksum(f, abc, "crc32");
  assert_failed(t, APEX_TASK_FAILED, APEX_E_EXECUTION, "'crc32'", ALGORITHM_LIST);
  apex_task_release(t);
}

static void test_checksum_missing_file_fails_naming_the_path(void **state) {
  fx_t *f = *state;
  char path[128];
  join(path, sizeof path, f, "no-such-file");
  apex_task_t *t = checksum(f, path, NULL);
  assert_failed(t, APEX_TASK_FAILED, APEX_E_EXECUTION, path, "No such file");
  apex_task_release(t);
}

static void test_checksum_of_a_directory_fails_naming_the_path(void **state) {
  fx_t *f = *state;
  apex_task_t *t = checksum(f, f->dir, "md5");
  assert_failed(t, APEX_TASK_FAILED, APEX_E_EXECUTION, f->dir, "not a regular file");
  apex_task_release(t);
}

static void test_checksum_through_a_non_directory_fails_naming_the_path(void **state) {
  fx_t *f = *state;
  char abc[128], path[160];
  join(abc, sizeof abc, f, "abc");
  write_file(abc, "abc", 3, 0644);
  snprintf(path, sizeof path, "%s/inner", abc); /* open fails ENOTDIR */
  apex_task_t *t = checksum(f, path, NULL);
  assert_failed(t, APEX_TASK_FAILED, APEX_E_EXECUTION, path, "Not a directory");
  apex_task_release(t);
}

static void test_checksum_of_an_unreadable_file_fails_naming_the_path(void **state) {
  fx_t *f = *state;
  if (geteuid() == 0) skip(); /* root reads a mode 000 file anyway */
  char path[128];
  join(path, sizeof path, f, "secret");
  write_file(path, "abc", 3, 0000);
  apex_task_t *t = checksum(f, path, NULL);
  assert_failed(t, APEX_TASK_FAILED, APEX_E_EXECUTION, path, "Permission denied");
  apex_task_release(t);
}

static void test_checksum_reports_monotone_progress_by_bytes(void **state) {
  fx_t *f = *state;
  /* Several 1 MiB chunks and a partial one; content with a digest computed
   * outside Apex (python3 hashlib over bytes i % 251). */
  const size_t size = 8 * MIB + 123;
  unsigned char *data = malloc(size);
  assert_non_null(data);
  for (size_t i = 0; i < size; i++) data[i] = (unsigned char)(i % 251);
  char path[128];
  join(path, sizeof path, f, "pattern");
  write_file(path, data, size, 0644);
  free(data);

  apex_task_t *t = checksum(f, path, "sha256");
  assert_digest(t, path, "sha256",
                "26c629edd55f2459e48fdfaf91b4a95733aadc15e95ceb299ec92441f753402a",
                (json_int_t)size);
  AWAIT(rec_dones(&f->rec) == 1, PROMPT_MS); /* every progress event precedes DONE */

  uint64_t id = apex_task_id(t);
  json_int_t prev = -1;
  size_t n = 0;
  rec_prog_t last = {0};
  pthread_mutex_lock(&f->rec.mu);
  for (size_t i = 0; i < f->rec.n; i++) {
    rec_prog_t *e = &f->rec.ev[i];
    if (e->task_id != id) continue;
    assert_int_equal(e->bytes_total, (json_int_t)size);
    assert_true(e->bytes_done >= prev);
    assert_true(e->pct >= 0.0 && e->pct <= 100.0);
    prev = e->bytes_done;
    last = *e;
    n++;
  }
  pthread_mutex_unlock(&f->rec.mu);
  assert_true(n >= 2); /* at least the start and the completed update */
  assert_int_equal(last.bytes_done, (json_int_t)size);
  assert_string_equal(last.status, "completed");
  assert_true(last.pct == 100.0);
  apex_task_release(t);
}

static void test_checksum_cancelled_mid_file_ends_within_a_second(void **state) {
  fx_t *f = *state;
  char path[128];
  join(path, sizeof path, f, "large");
  make_large(path, LARGE_SIZE);
  json_t *p = json_pack("{s:s, s:s}", "path", path, "algorithm", "sha3-256");
  assert_non_null(p);
  apex_task_t *t = NULL;
  assert_int_equal(apex_manager_submit(f->m, "files", "checksum", p, NULL, &t, NULL), APEX_OK);
  json_decref(p);
  AWAIT(rec_progress_past(&f->rec, apex_task_id(t), 0) > 0, 10000); /* mid-file now */
  int64_t t0 = now_ms();
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  int64_t took = now_ms() - t0;
  assert_failed(t, APEX_TASK_CANCELLED, APEX_E_CANCELLED, path, "cancelled after");
  assert_true(took < 1000);
  apex_task_release(t);
}

/* -------------------------------------------------------------------- copy */

static apex_task_t *copy(fx_t *f, const char *src, const char *dst, int overwrite) {
  json_t *p = json_pack("{s:s, s:s, s:b}", "src", src, "dst", dst, "overwrite", overwrite);
  assert_non_null(p);
  return run(f, "copy", p, NULL);
}

static void test_copy_copies_content_and_permissions(void **state) {
  fx_t *f = *state;
  char src[128], dst[128], got[64], list[256];
  join(src, sizeof src, f, "src");
  join(dst, sizeof dst, f, "dst");
  write_file(src, "copied content\n", 15, 0640);
  apex_task_t *t = copy(f, src, dst, 0);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_non_null(r);
  assert_int_equal(json_object_size(r), 5);
  assert_string_equal(json_string_value(json_object_get(r, "src")), src);
  assert_string_equal(json_string_value(json_object_get(r, "dst")), dst);
  assert_int_equal(json_integer_value(json_object_get(r, "bytes")), 15);
  /* sha256 of "copied content\n" (sha256sum); the copy was verified by it. */
  assert_string_equal(json_string_value(json_object_get(r, "sha256")),
                      "abb19caeef09cde15af8b8db7b26d5fc89a9d94ec518a913334581729eb0451c");
  assert_int_equal(json_integer_value(json_object_get(r, "resumed_from")), 0);
  json_decref(r);
  assert_int_equal(read_file(dst, got, sizeof got), 15);
  assert_string_equal(got, "copied content\n");
  struct stat st;
  assert_int_equal(stat(dst, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0640);
  listing(f->dir, list, sizeof list);
  assert_string_equal(list, "dst,src"); /* no temp file left */
  apex_task_release(t);
}

static void test_copy_of_several_chunks_is_exact(void **state) {
  fx_t *f = *state;
  const size_t size = 3 * MIB + 7;
  unsigned char *data = malloc(size), *back = malloc(size + 1);
  assert_non_null(data);
  assert_non_null(back);
  for (size_t i = 0; i < size; i++) data[i] = (unsigned char)(i * 31 + (i >> 12));
  char src[128], dst[128];
  join(src, sizeof src, f, "src");
  join(dst, sizeof dst, f, "dst");
  write_file(src, data, size, 0600);
  apex_task_t *t = copy(f, src, dst, 0);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  int fd = open(dst, O_RDONLY | O_CLOEXEC);
  assert_true(fd >= 0);
  size_t got = 0;
  for (ssize_t n; (n = read(fd, back + got, size + 1 - got)) > 0;) got += (size_t)n;
  close(fd);
  assert_int_equal(got, size);
  assert_memory_equal(back, data, size);
  free(data);
  free(back);
  apex_task_release(t);
}

static void test_copy_refuses_an_existing_dst_without_overwrite(void **state) {
  fx_t *f = *state;
  char src[128], dst[128], got[64], list[256];
  join(src, sizeof src, f, "src");
  join(dst, sizeof dst, f, "dst");
  write_file(src, "new", 3, 0644);
  write_file(dst, "old", 3, 0644);
  apex_task_t *t = copy(f, src, dst, 0);
  assert_failed(t, APEX_TASK_FAILED, APEX_E_EXECUTION, dst, "overwrite=true");
  read_file(dst, got, sizeof got);
  assert_string_equal(got, "old");
  listing(f->dir, list, sizeof list);
  assert_string_equal(list, "dst,src");
  apex_task_release(t);
}

static void test_copy_with_overwrite_replaces_dst(void **state) {
  fx_t *f = *state;
  char src[128], dst[128], got[64], list[256];
  join(src, sizeof src, f, "src");
  join(dst, sizeof dst, f, "dst");
  write_file(src, "new", 3, 0644);
  write_file(dst, "old!", 4, 0644);
  apex_task_t *t = copy(f, src, dst, 1);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(read_file(dst, got, sizeof got), 3);
  assert_string_equal(got, "new");
  listing(f->dir, list, sizeof list);
  assert_string_equal(list, "dst,src");
  apex_task_release(t);
}

static void test_cancelled_copy_leaves_neither_dst_nor_temp_file(void **state) {
  fx_t *f = *state;
  char src[128], dst[128], list[256];
  join(src, sizeof src, f, "src");
  join(dst, sizeof dst, f, "dst");
  make_large(src, LARGE_SIZE);
  json_t *p = json_pack("{s:s, s:s}", "src", src, "dst", dst);
  assert_non_null(p);
  apex_task_t *t = NULL;
  assert_int_equal(apex_manager_submit(f->m, "files", "copy", p, NULL, &t, NULL), APEX_OK);
  json_decref(p);
  AWAIT(rec_progress_past(&f->rec, apex_task_id(t), 0) > 0, 10000); /* temp file exists now */
  int64_t t0 = now_ms();
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_true(now_ms() - t0 < PROMPT_MS);
  assert_failed(t, APEX_TASK_CANCELLED, APEX_E_CANCELLED, src, "cancelled after");
  /* The handler returned (that is what ended the task): cleanup is done. */
  listing(f->dir, list, sizeof list);
  assert_string_equal(list, "src");
  apex_task_release(t);
}

static void test_copy_of_a_missing_src_fails_and_leaves_nothing(void **state) {
  fx_t *f = *state;
  char src[128], dst[128], list[256];
  join(src, sizeof src, f, "absent");
  join(dst, sizeof dst, f, "dst");
  apex_task_t *t = copy(f, src, dst, 0);
  assert_failed(t, APEX_TASK_FAILED, APEX_E_EXECUTION, src, "No such file");
  listing(f->dir, list, sizeof list);
  assert_string_equal(list, "");
  apex_task_release(t);
}

static void test_copy_into_a_missing_directory_fails_and_leaves_nothing(void **state) {
  fx_t *f = *state;
  char src[128], dst[128], list[256];
  join(src, sizeof src, f, "src");
  join(dst, sizeof dst, f, "no-dir/dst");
  write_file(src, "abc", 3, 0644);
  apex_task_t *t = copy(f, src, dst, 0);
  assert_failed(t, APEX_TASK_FAILED, APEX_E_EXECUTION, dst, "No such file");
  listing(f->dir, list, sizeof list);
  assert_string_equal(list, "src");
  apex_task_release(t);
}

static void test_timed_out_copy_leaves_nothing_once_the_handler_returned(void **state) {
  fx_t *f = *state;
  char src[128], dst[128], list[256];
  join(src, sizeof src, f, "src");
  join(dst, sizeof dst, f, "dst");
  make_large(src, LARGE_SIZE);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = 0.05;
  json_t *p = json_pack("{s:s, s:s}", "src", src, "dst", dst);
  assert_non_null(p);
  apex_task_t *t = run(f, "copy", p, &o);
  assert_failed(t, APEX_TASK_TIMED_OUT, APEX_E_TIMEOUT, "timed out", NULL);
  apex_stats_t s = APEX_STATS_INIT;
  AWAIT(apex_manager_stats_v2(f->m, &s) == APEX_OK && s.running == 0, 10000);
  listing(f->dir, list, sizeof list);
  assert_string_equal(list, "src");
  apex_task_release(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
      T(test_checksum_matches_known_digests_for_every_algorithm),
      T(test_checksum_defaults_to_sha256),
      T(test_checksum_algorithm_name_is_case_insensitive),
      T(test_checksum_unknown_algorithm_fails_naming_the_supported_ones),
      T(test_checksum_missing_file_fails_naming_the_path),
      T(test_checksum_of_a_directory_fails_naming_the_path),
      T(test_checksum_through_a_non_directory_fails_naming_the_path),
      T(test_checksum_of_an_unreadable_file_fails_naming_the_path),
      T(test_checksum_reports_monotone_progress_by_bytes),
      T(test_checksum_cancelled_mid_file_ends_within_a_second),
      T(test_copy_copies_content_and_permissions),
      T(test_copy_of_several_chunks_is_exact),
      T(test_copy_refuses_an_existing_dst_without_overwrite),
      T(test_copy_with_overwrite_replaces_dst),
      T(test_cancelled_copy_leaves_neither_dst_nor_temp_file),
      T(test_copy_of_a_missing_src_fails_and_leaves_nothing),
      T(test_copy_into_a_missing_directory_fails_and_leaves_nothing),
      T(test_timed_out_copy_leaves_nothing_once_the_handler_returned),
#undef T
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
