/* `apex batch`'s live view: one block redrawn in place, as display.c
 * redraws `apex run`'s (and with its row rules, cli_row_*): each frame moves
 * up over the rows the last one drew, clears and rewrites each row (each
 * exactly one terminal line, cut to the width) and clears what is left
 * below. The block: the overall bar (lines done of the total), the counts,
 * then one row per running task in line order, as many as the terminal has
 * rows for, then "+N more running". Redraws are limited to about 20 a
 * second; the cursor is hidden while the view is up.
 *
 * Main thread only. What can fail: memory for a frame (the frame is
 * skipped) and writes to the terminal (ignored: nothing to tell, nowhere to
 * tell it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"

#define REDRAW_INTERVAL_MS 50

static void view_write(view_t *v, const char *p, size_t n) {
  fflush(stdout); /* what stdio holds goes above the block */
  cli_write_all(v->fd, p, n);
}

/* A frame being built: escapes and finished rows. */
typedef struct fbuf {
  char *p;
  size_t len, cap;
  int oom;
} fbuf_t;

static void fb_put(fbuf_t *f, const char *s, size_t n) {
  if (f->oom) return;
  if (f->len + n + 1 > f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 4096;
    while (cap < f->len + n + 1) cap *= 2;
    char *p = realloc(f->p, cap);
    if (!p) {
      f->oom = 1;
      return;
    }
    f->p = p;
    f->cap = cap;
  }
  memcpy(f->p + f->len, s, n);
  f->len += n;
  f->p[f->len] = '\0';
}

/* Appends a finished row (already clean and fitted) and frees it. */
static void fb_row(fbuf_t *f, cli_row_t *r, int *count) {
  if (r->oom) f->oom = 1;
  fb_put(f, "\r\x1b[2K", 5);
  if (r->p) fb_put(f, r->p, r->len);
  fb_put(f, "\n", 1);
  free(r->p);
  ++*count;
}

void cli_batch_fmt_elapsed(char *buf, size_t len, int64_t ms) {
  int64_t s = ms / 1000;
  if (s < 60) snprintf(buf, len, "%.1f s", (double)ms / 1000.0);
  else snprintf(buf, len, "%lld:%02lld", (long long)(s / 60), (long long)(s % 60));
}

static int clamp_pct(double pct) { return !(pct >= 0) ? 0 : pct > 100 ? 100 : (int)pct; }

/* The overall bar: done of total, the elapsed time. */
static void frame_bar(batch_t *b, fbuf_t *f, int cols, int *count) {
  uint64_t done = b->succeeded + b->failed + b->timed_out + b->cancelled;
  int exact = b->total_known || b->eof;
  uint64_t total = b->eof || !b->total_known ? b->read : b->total;
  if (total < b->read) total = b->read; /* the file grew */
  double pct = total ? 100.0 * (double)done / (double)total : (b->eof ? 100.0 : 0.0);
  cli_row_t r = {.cols_left = cols - 1};
  int bw = cols - 1 - 40;
  cli_row_bar(&r, pct, bw > 40 ? 40 : bw < 10 ? 10 : bw);
  char el[32], text[160];
  cli_batch_fmt_elapsed(el, sizeof el, cli_now_ms() - b->start_ms);
  snprintf(text, sizeof text, " %4d%%  %llu/%llu%s lines  %s", clamp_pct(pct),
           (unsigned long long)done, (unsigned long long)total, exact ? "" : "+", el);
  cli_row_text(&r, text);
  fb_row(f, &r, count);
}

/* The counts: where the lines are. */
static void frame_counts(batch_t *b, fbuf_t *f, int cols, int *count) {
  cli_row_t r = {.cols_left = cols - 1};
  char text[96];
  snprintf(text, sizeof text, "running %llu, queued %llu", (unsigned long long)b->n_running,
           (unsigned long long)b->n_queued);
  cli_row_text(&r, text);
  if (b->n_retry) {
    snprintf(text, sizeof text, ", retrying %llu", (unsigned long long)b->n_retry);
    cli_row_text(&r, text);
  }
  if (b->total_known && !b->eof && b->total > b->read) {
    snprintf(text, sizeof text, ", not read %llu", (unsigned long long)(b->total - b->read));
    cli_row_text(&r, text);
  }
  snprintf(text, sizeof text, " | succeeded %llu, failed %llu", (unsigned long long)b->succeeded,
           (unsigned long long)(b->failed + b->timed_out));
  cli_row_text(&r, text);
  if (b->cancelled) {
    snprintf(text, sizeof text, ", cancelled %llu", (unsigned long long)b->cancelled);
    cli_row_text(&r, text);
  }
  if (b->stop == STOP_SIGNAL) cli_row_text(&r, b->in_flight ? "  (cancelling)" : "  (cancelled)");
  fb_row(f, &r, count);
}

/* One row per running task, in line order: "line N  ACTION [bar] P%  MSG",
 * the bars aligned. */
static void frame_task(const slot_t *s, int name_w, fbuf_t *f, int cols, int *count) {
  cli_row_t r = {.cols_left = cols - 1};
  char text[64];
  snprintf(text, sizeof text, "  line %llu  ", (unsigned long long)s->line);
  int room = name_w - cli_text_width(text); /* what the action may take */
  cli_row_text(&r, text);
  if (room > 0 && room < r.cols_left) {
    int rest = r.cols_left - room;
    r.cols_left = room;
    cli_row_text(&r, s->action);
    r.cols_left += rest;
  }
  while (r.cols_left > 0 && cols - 1 - r.cols_left < name_w) cli_row_text(&r, " ");
  double p = s->progress ? apex_progress_percentage(s->progress) : 0;
  cli_row_text(&r, " ");
  cli_row_bar(&r, p, 10);
  snprintf(text, sizeof text, " %4d%%", clamp_pct(p));
  cli_row_text(&r, text);
  const char *msg = s->progress ? apex_progress_message(s->progress) : "";
  if (*msg) {
    cli_row_text(&r, "  ");
    cli_row_text(&r, msg);
  }
  fb_row(f, &r, count);
}

static void frame(batch_t *b, fbuf_t *f, int *count) {
  int cols, rows;
  cli_term_size(b->view->fd, &cols, &rows);
  int max_rows = rows - 1 > 3 ? rows - 1 : 3;
  frame_bar(b, f, cols, count);
  frame_counts(b, f, cols, count);
  int room = max_rows - *count;
  uint64_t running = b->n_running;
  int shown_max = running <= (uint64_t)room ? (int)running : room - 1;
  int name_w = 0, shown = 0;
  char text[64];
  for (const slot_t *s = b->head; s && shown < shown_max; s = s->next) {
    if (s->state != SL_RUNNING) continue;
    snprintf(text, sizeof text, "  line %llu  ", (unsigned long long)s->line);
    int w = cli_text_width(text) + cli_text_width(s->action);
    if (w > name_w) name_w = w;
    shown++;
  }
  if (name_w > cols / 2) name_w = cols / 2;
  shown = 0;
  for (const slot_t *s = b->head; s && shown < shown_max; s = s->next) {
    if (s->state != SL_RUNNING) continue;
    frame_task(s, name_w, f, cols, count);
    shown++;
  }
  if ((uint64_t)shown < running) {
    cli_row_t r = {.cols_left = cols - 1};
    snprintf(text, sizeof text, "  +%llu more running",
             (unsigned long long)(running - (uint64_t)shown));
    cli_row_text(&r, text);
    fb_row(f, &r, count);
  }
}

void cli_batch_view_draw(batch_t *b) {
  view_t *v = b->view;
  if (!v) return;
  fbuf_t f = {0};
  char seq[32];
  if (!v->cursor_hidden) fb_put(&f, "\x1b[?25l", 6);
  if (v->lines > 0) fb_put(&f, seq, (size_t)snprintf(seq, sizeof seq, "\r\x1b[%dA", v->lines));
  int count = 0;
  frame(b, &f, &count);
  fb_put(&f, "\x1b[J", 3);
  if (!f.oom) {
    view_write(v, f.p, f.len);
    v->cursor_hidden = 1;
    if (v->cursor_flag) atomic_store(v->cursor_flag, 1);
    v->lines = count;
  }
  free(f.p);
  v->dirty = 0;
  v->last_ms = cli_now_ms();
}

int cli_batch_view_due_ms(const batch_t *b) {
  if (!b->view || !b->view->dirty) return -1;
  int64_t wait = b->view->last_ms + REDRAW_INTERVAL_MS - cli_now_ms();
  return wait > 0 ? (int)wait : 0;
}

void cli_batch_view_dirty(batch_t *b) {
  if (b->view) b->view->dirty = 1;
}

/* Erases the block so a plain line can print where it was. */
void cli_batch_view_erase(batch_t *b) {
  view_t *v = b->view;
  if (!v || v->lines == 0) return;
  char seq[32];
  int n = snprintf(seq, sizeof seq, "\r\x1b[%dA\x1b[J", v->lines);
  view_write(v, seq, (size_t)n);
  v->lines = 0;
  v->dirty = 1;
}

/* Leaves the last frame on screen and shows the cursor again. */
void cli_batch_view_close(batch_t *b) {
  view_t *v = b->view;
  if (!v) return;
  if (v->cursor_hidden) view_write(v, "\x1b[?25h", 6);
  if (v->cursor_flag) atomic_store(v->cursor_flag, 0);
  free(v);
  b->view = NULL;
}

