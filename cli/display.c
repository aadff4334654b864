/* The live terminal display of `apex run`: a block of lines, one for the task
 * and one per sub-task (an indented tree), redrawn in place. At each level
 * the sub-tasks at work come first, the finished ones ("completed",
 * "succeeded", or no status at 100 %) collapse into one "N completed" line,
 * then come failed ones, then those not started ("pending", "queued").
 *
 * How it stays in place: each frame moves the cursor up over the lines the
 * last frame drew ("\x1b[NA"), clears and rewrites each line ("\x1b[2K"),
 * and clears whatever is left below ("\x1b[J"). That only works if every
 * line is exactly one terminal row, so each line is cut to the terminal's
 * width minus one column (TIOCGWINSZ, fallback 80x24), counted with wcwidth,
 * control characters from plugins are replaced by spaces, and the block never
 * has more lines than the terminal has rows (the rest is summarized as
 * "... N more"). Redraws are limited to about 20 a second; the cursor is
 * hidden while the display is up and shown again by cli_display_free (and
 * by the SIGINT handler in run.c on a hard exit).
 *
 * The same character rule is exported as cli_term_clean, for the other lines
 * the command prints (outcome, retry notices, errors echoing argv).
 *
 * Threads: main thread only. What can fail: memory for a frame (the frame
 * is then skipped) and writes to the terminal (ignored: nothing to report
 * them on).
 */
#include <locale.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <wchar.h>

#include "cli.h"

#define REDRAW_INTERVAL_MS 50
#define SUB_BAR_WIDTH 10
#define MAX_SUB_ROWS 256
#define LEAD_MAX (APEX_PROGRESS_MAX_DEPTH * 8 + 16)
#define PARTIAL_SHOWN 512 /* wider than any terminal line */

struct cli_display {
  int fd;
  apex_progress_t *progress; /* latest, a reference we hold; NULL: none yet */
  char state[32];            /* the task's state name */
  int dirty;
  int64_t last_draw_ms;
  int lines;                 /* lines the last frame left on screen */
  int cursor_hidden;
  /* The latest partial result as compact JSON, cut to PARTIAL_SHOWN bytes
   * (ASCII only, so the cut splits no character); "": none. */
  char partial[PARTIAL_SHOWN + 1];
};

/* ---------------------------------------------------------------- buffer */

typedef struct sbuf {
  char *p;
  size_t len, cap;
  int oom;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_printf(sbuf_t *b, const char *fmt, ...) APEX_PRINTF(2, 3);
static void sb_printf(sbuf_t *b, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* One screen line being built: text goes in while columns are left. */
typedef struct line {
  sbuf_t *b;
  int cols_left;
} line_t;

static void put_text(line_t *l, const char *text) {
  const char *s = text;
  while (*s && l->cols_left > 0) {
    long cp = -1;
    size_t n = cli_utf8_decode(s, &cp);
    if (n == 0) n = 1; /* a malformed byte: cp stays -1 */
    if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0)) {
      /* A newline or escape from a plugin would break the frame. */
      sb_put(l->b, cp < 0 ? "?" : " ", 1);
      l->cols_left--;
    } else {
      int w = cp < 0x80 ? 1 : wcwidth((wchar_t)cp);
      if (w < 0) w = 1;
      if (w > l->cols_left) break;
      sb_put(l->b, s, n);
      l->cols_left -= w;
    }
    s += n;
  }
}

static void put_pad(line_t *l, int n) {
  while (n-- > 0 && l->cols_left > 0) put_text(l, " ");
}

static int text_width(const char *text) {
  sbuf_t scratch = {0};
  line_t l = {&scratch, 1 << 20};
  put_text(&l, text);
  free(scratch.p);
  return (1 << 20) - l.cols_left;
}

static int clamp_pct(double pct) {
  if (!(pct >= 0)) return 0;
  if (pct > 100) return 100;
  return (int)pct;
}

static void put_bar(line_t *l, double pct, int width) {
  int filled = clamp_pct(pct) * width / 100;
  char bar[256];
  if (width > (int)sizeof bar - 3) width = (int)sizeof bar - 3;
  int i = 0;
  bar[i++] = '[';
  for (int k = 0; k < width; k++) bar[i++] = k < filled ? '#' : '-';
  bar[i++] = ']';
  bar[i] = '\0';
  put_text(l, bar);
}

/* ------------------------------------------------------------- sub-tasks */

typedef struct sub_row {
  char lead[LEAD_MAX]; /* "  ├─ ", "  │  └─ ", ... */
  const char *name, *status, *message;
  double pct;
  size_t finished; /* > 0: the summary row "N completed" of a level */
  int cat;         /* CAT_* below */
} sub_row_t;

typedef struct sub_rows {
  sub_row_t *rows;
  size_t n, total;     /* kept, seen */
  size_t by_cat[4];    /* rows seen of each CAT_* */
} sub_rows_t;

/* The order a level's sub-tasks are shown in: those at work first, then
 * the finished ones as one count, then failed ones, then those not started.
 * A tree of 768 folders then shows the few being scanned, not the hundreds
 * done or waiting, on a screen that holds twenty. */
enum { CAT_ACTIVE, CAT_FINISHED, CAT_PROBLEM, CAT_PENDING, N_CATS };
_Static_assert(N_CATS == 4, "sub_rows_t.by_cat has a count per category");

static int category(const json_t *s) {
  const char *st = json_string_value(json_object_get(s, "status"));
  double pct = json_number_value(json_object_get(s, "percentage"));
  if (!st) return pct >= 100.0 ? CAT_FINISHED : CAT_ACTIVE;
  if (!strcmp(st, "completed") || !strcmp(st, "succeeded")) return CAT_FINISHED;
  if (!strcmp(st, "error") || !strcmp(st, "failed") || !strcmp(st, "cancelled") ||
      !strcmp(st, "timed_out"))
    return CAT_PROBLEM;
  if (!strcmp(st, "pending") || !strcmp(st, "queued")) return CAT_PENDING;
  return CAT_ACTIVE;
}

static sub_row_t *next_row(sub_rows_t *out, const char *prefix, int last, int cat) {
  out->total++;
  out->by_cat[cat]++;
  if (out->n >= MAX_SUB_ROWS) return NULL;
  sub_row_t *r = &out->rows[out->n++];
  memset(r, 0, sizeof *r);
  r->cat = cat;
  snprintf(r->lead, sizeof r->lead, "%s%s", prefix, last ? "└─ " : "├─ ");
  return r;
}

static void walk(const json_t *subs, const char *prefix, int depth, sub_rows_t *out) {
  size_t count = json_array_size(subs), finished = 0, shown = 0;
  for (size_t i = 0; i < count; i++) {
    const json_t *s = json_array_get(subs, i);
    if (!json_is_object(s)) continue;
    if (category(s) == CAT_FINISHED)
      finished++;
    else
      shown++;
  }
  size_t left = shown + (finished > 0); /* rows this level still draws */
  for (int cat = 0; cat < N_CATS; cat++) {
    if (cat == CAT_FINISHED) {
      if (finished == 0) continue;
      sub_row_t *r = next_row(out, prefix, --left == 0, CAT_FINISHED);
      if (r) r->finished = finished;
      continue;
    }
    for (size_t i = 0; i < count; i++) {
      const json_t *s = json_array_get(subs, i);
      if (!json_is_object(s) || category(s) != cat) continue;
      int last = --left == 0;
      sub_row_t *r = next_row(out, prefix, last, cat);
      if (r) {
        r->name = json_string_value(json_object_get(s, "name"));
        r->status = json_string_value(json_object_get(s, "status"));
        r->message = json_string_value(json_object_get(s, "message"));
        r->pct = json_number_value(json_object_get(s, "percentage"));
      }
      const json_t *kids = json_object_get(s, "sub_tasks");
      if (json_is_array(kids) && depth < APEX_PROGRESS_MAX_DEPTH) {
        char next[LEAD_MAX];
        snprintf(next, sizeof next, "%s%s", prefix, last ? "   " : "│  ");
        walk(kids, next, depth + 1, out);
      }
    }
  }
}

/* ----------------------------------------------------------------- frame */

static void term_size(int fd, int *cols, int *rows) {
  struct winsize ws;
  *cols = 80;
  *rows = 24;
  if (ioctl(fd, TIOCGWINSZ, &ws) == 0) {
    if (ws.ws_col > 0) *cols = ws.ws_col;
    if (ws.ws_row > 0) *rows = ws.ws_row;
  }
}

static void frame_task_line(cli_display_t *d, sbuf_t *b, int cols) {
  double pct = d->progress ? apex_progress_percentage(d->progress) : 0;
  const char *msg = d->progress ? apex_progress_message(d->progress) : "";
  const char *pstatus = d->progress ? apex_progress_status(d->progress) : "running";
  line_t l = {b, cols - 1};
  /* The bar takes what the message can spare: 10 to 40 columns. */
  int bw = cols - 1 - 8 - 30;
  if (bw > 40) bw = 40;
  if (bw < 10) bw = 10;
  if (bw + 8 > cols - 1) bw = cols - 1 - 8 > 1 ? cols - 1 - 8 : 1;
  put_bar(&l, pct, bw);
  char num[16];
  snprintf(num, sizeof num, " %4d%%", clamp_pct(pct));
  put_text(&l, num);
  if (*msg) {
    put_text(&l, "  ");
    put_text(&l, msg);
  }
  const char *tag = strcmp(d->state, "running") != 0 ? d->state
                    : strcmp(pstatus, "running") != 0 ? pstatus
                                                      : NULL;
  if (tag && *tag) {
    put_text(&l, "  (");
    put_text(&l, tag);
    put_text(&l, ")");
  }
}

static void frame_sub_line(const sub_row_t *r, int name_w, sbuf_t *b, int cols) {
  line_t l = {b, cols - 1};
  int before = l.cols_left;
  put_text(&l, r->lead);
  if (r->finished) {
    char text[48];
    snprintf(text, sizeof text, "%zu completed", r->finished);
    put_text(&l, text);
    return;
  }
  /* The name gets what is left of the name column, so the bars align. */
  int room = name_w - (before - l.cols_left);
  if (room > 0 && room < l.cols_left) {
    int rest = l.cols_left - room;
    l.cols_left = room;
    put_text(&l, r->name ? r->name : "?");
    l.cols_left += rest;
  } else if (room > 0) {
    put_text(&l, r->name ? r->name : "?");
  }
  put_pad(&l, name_w - (before - l.cols_left));
  put_text(&l, " ");
  put_bar(&l, r->pct, SUB_BAR_WIDTH);
  char num[16];
  snprintf(num, sizeof num, " %4d%%", clamp_pct(r->pct));
  put_text(&l, num);
  if (r->status && *r->status) {
    put_text(&l, "  ");
    put_text(&l, r->status);
  }
  if (r->message && *r->message) {
    put_text(&l, "  ");
    put_text(&l, r->message);
  }
}

static void frame_lines(cli_display_t *d, sbuf_t *b, int *count) {
  int cols, rows;
  term_size(d->fd, &cols, &rows);
  int max_lines = rows - 1 > 1 ? rows - 1 : 1;
  sub_rows_t subs = {0};
  const json_t *tree = d->progress ? apex_progress_sub_tasks(d->progress) : NULL;
  if (json_array_size(tree) > 0) {
    subs.rows = calloc(MAX_SUB_ROWS, sizeof *subs.rows);
    if (subs.rows) walk(tree, "  ", 1, &subs);
  }
  size_t shown = subs.n;
  int more = subs.total > subs.n;
  size_t head = d->partial[0] && max_lines >= 3 ? 2 : 1; /* the task, its partial */
  if (head + shown + (size_t)more > (size_t)max_lines) {
    shown = (size_t)max_lines >= head + 1 ? (size_t)max_lines - head - 1 : 0;
    more = 1;
  }
  int name_w = 0;
  for (size_t i = 0; i < shown; i++) {
    if (subs.rows[i].finished) continue; /* its text is not in the name column */
    int w = text_width(subs.rows[i].lead) + text_width(subs.rows[i].name ? subs.rows[i].name : "?");
    if (w > name_w) name_w = w;
  }
  if (name_w > cols / 3) name_w = cols / 3;

  *count = 0;
  sb_put(b, "\r\x1b[2K", 5);
  frame_task_line(d, b, cols);
  sb_put(b, "\n", 1);
  ++*count;
  if (head == 2) {
    line_t l = {b, cols - 1};
    sb_put(b, "\r\x1b[2K", 5);
    put_text(&l, "  partial: ");
    put_text(&l, d->partial);
    sb_put(b, "\n", 1);
    ++*count;
  }
  for (size_t i = 0; i < shown; i++, ++*count) {
    sb_put(b, "\r\x1b[2K", 5);
    frame_sub_line(&subs.rows[i], name_w, b, cols);
    sb_put(b, "\n", 1);
  }
  if (more && *count < max_lines) {
    /* What the hidden rows are, so the counts survive a small screen. */
    size_t hidden[N_CATS];
    memcpy(hidden, subs.by_cat, sizeof hidden);
    for (size_t i = 0; i < shown; i++) hidden[subs.rows[i].cat]--;
    static const char *const words[N_CATS] = {"running", NULL, "failed", "pending"};
    char tail[160];
    int len = snprintf(tail, sizeof tail, "  ... %zu more", subs.total - shown);
    const char *sep = ": ";
    for (int c = 0; c < N_CATS && len > 0 && (size_t)len < sizeof tail; c++) {
      if (!words[c] || !hidden[c]) continue;
      len += snprintf(tail + len, sizeof tail - (size_t)len, "%s%zu %s", sep, hidden[c], words[c]);
      sep = ", ";
    }
    line_t l = {b, cols - 1};
    sb_put(b, "\r\x1b[2K", 5);
    put_text(&l, tail);
    sb_put(b, "\n", 1);
    ++*count;
  }
  free(subs.rows);
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return; /* a gone terminal: nothing to tell, nowhere to tell it */
    p += w;
    n -= (size_t)w;
  }
}

/* ------------------------------------------------------------------- API */

cli_display_t *cli_display_new(int fd) {
  cli_display_t *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  d->fd = fd;
  snprintf(d->state, sizeof d->state, "queued");
  /* wcwidth needs a UTF-8 LC_CTYPE; only the character type category is
   * touched, so number formatting stays "C". */
  if (!setlocale(LC_CTYPE, "") || MB_CUR_MAX == 1) setlocale(LC_CTYPE, "C.UTF-8");
  return d;
}

void cli_display_free(cli_display_t *d) {
  if (!d) return;
  if (d->cursor_hidden) {
    fflush(stdout);
    write_all(d->fd, "\x1b[?25h", 6);
  }
  apex_progress_unref(d->progress);
  free(d);
}

void cli_display_progress(cli_display_t *d, const apex_progress_t *p) {
  if (!d || !p) return;
  apex_progress_unref(d->progress);
  /* Immutable and reference-counted: keeping it is cheaper than copying. */
  d->progress = apex_progress_ref((apex_progress_t *)p);
  d->dirty = 1;
}

void cli_display_partial(cli_display_t *d, const json_t *v) {
  if (!d) return;
  d->partial[0] = '\0';
  if (v) {
    /* Rate-bounded (a PARTIAL event at most 20 times a second): printing it
     * whole costs less than knowing how much of it a line shows. */
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_ENSURE_ASCII |
                                JSON_REAL_PRECISION(15));
    if (s) snprintf(d->partial, sizeof d->partial, "%s", s);
    free(s);
  }
  d->dirty = 1;
}

void cli_display_state(cli_display_t *d, const char *state) {
  if (!d) return;
  snprintf(d->state, sizeof d->state, "%s", state);
  d->dirty = 1;
}

int cli_display_due_ms(cli_display_t *d) {
  if (!d || !d->dirty) return -1;
  int64_t wait = d->last_draw_ms + REDRAW_INTERVAL_MS - cli_now_ms();
  return wait > 0 ? (int)wait : 0;
}

void cli_display_tick(cli_display_t *d) {
  if (d && d->dirty && cli_display_due_ms(d) == 0) cli_display_draw(d);
}

void cli_display_draw(cli_display_t *d) {
  if (!d) return;
  sbuf_t b = {0};
  if (!d->cursor_hidden) sb_put(&b, "\x1b[?25l", 6);
  if (d->lines > 0) sb_printf(&b, "\r\x1b[%dA", d->lines);
  int count = 0;
  frame_lines(d, &b, &count);
  sb_put(&b, "\x1b[J", 3);
  if (!b.oom) {
    fflush(stdout); /* what stdio holds goes above the block */
    write_all(d->fd, b.p, b.len);
    d->cursor_hidden = 1;
    d->lines = count;
  }
  free(b.p);
  d->dirty = 0;
  d->last_draw_ms = cli_now_ms();
}

char *cli_term_clean(const char *text) {
  sbuf_t b = {0};
  line_t l = {&b, 1 << 30}; /* no width limit: only the character rule */
  sb_put(&b, "", 0);        /* an empty text is "", not NULL */
  put_text(&l, text);
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

void cli_display_erase(cli_display_t *d) {
  if (!d || d->lines == 0) return;
  char seq[32];
  int n = snprintf(seq, sizeof seq, "\r\x1b[%dA\x1b[J", d->lines);
  fflush(stdout);
  write_all(d->fd, seq, (size_t)n);
  d->lines = 0;
}

/* ------------------------------------------ rows for other views (cli.h) */

/* The row borrows the buffer for the duration of one call. */
#define ROW_CALL(r, call)                                      \
  do {                                                         \
    sbuf_t b_ = {(r)->p, (r)->len, (r)->cap, (r)->oom};        \
    line_t l_ = {&b_, (r)->cols_left};                         \
    call;                                                      \
    (r)->p = b_.p, (r)->len = b_.len, (r)->cap = b_.cap;       \
    (r)->oom = b_.oom, (r)->cols_left = l_.cols_left;          \
  } while (0)

void cli_row_text(cli_row_t *r, const char *text) { ROW_CALL(r, put_text(&l_, text)); }

void cli_row_bar(cli_row_t *r, double pct, int width) { ROW_CALL(r, put_bar(&l_, pct, width)); }

int cli_text_width(const char *text) { return text_width(text); }

void cli_term_size(int fd, int *cols, int *rows) { term_size(fd, cols, rows); }
