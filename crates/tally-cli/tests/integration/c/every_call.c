/*
 * every_call STATE_ROOT HOST:PORT HOST_TRUST AUTHORITY_URL AUTHORITY_TRUST SETUP_KEY MAK
 *             SILENT_HOST:PORT EDITION_KEY
 *
 * Runs every call of tally.h against a real host and a real authority (driven by
 * crates/tally-cli/tests/integration/embedding_api.rs). Prints "ok: ..." per check and
 * "FAIL: ..." for a failed one; for the offline MAK activation it prints "IID: <installation
 * ID>" and reads the confirmation ID from stdin. Exits 0 when every check passed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tally.h"

static int failures = 0;
static int log_lines = 0;

static void check(int ok, const char *what, tally_result rc) {
  char message[512];
  tally_last_error_message(message, sizeof message);
  if (ok) {
    printf("ok: %s\n", what);
  } else {
    failures++;
    printf("FAIL: %s: 0x%08X %s: %s\n", what, (unsigned)rc, tally_result_name(rc), message);
  }
  fflush(stdout);
}

static void on_log(void *user_data, tally_log_level level, const char *message) {
  int *count = (int *)user_data;
  (*count)++;
  if (*count <= 3) fprintf(stderr, "log %u: %s\n", (unsigned)level, message);
}

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static tally_licensing *open_at(const char *root, const char *name) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/%s", root, name);
  tally_licensing *h = NULL;
  tally_result rc = tally_licensing_open(dir, NULL, &h);
  check(rc == TALLY_OK && h != NULL, "open", rc);
  return h;
}

int main(int argc, char **argv) {
  if (argc != 10) {
    fprintf(stderr, "usage: %s STATE_ROOT HOST HOST_TRUST AUTHORITY_URL AUTHORITY_TRUST "
                    "SETUP_KEY MAK SILENT_HOST EDITION_KEY\n", argv[0]);
    return 2;
  }
  const char *root = argv[1], *host = argv[2], *host_trust = argv[3], *url = argv[4],
             *auth_trust = argv[5], *setup_key = argv[6], *mak = argv[7], *silent = argv[8],
             *edition_key = argv[9];
  tally_result rc;

  /* Constants and names. */
  check(TALLY_HOST_REVOKED == 0xC7A1000Au && TALLY_OK == 0, "hex constants", 0);
  check(strcmp(tally_result_name(0), "success") == 0, "tally_result_name(0) is success", 0);
  check(strcmp(tally_result_name(TALLY_HOST_REVOKED), "host_revoked") == 0, "names", 0);
  check(strcmp(tally_version(), "") != 0, "version", 0);

  /* A setup-key installation: host set by hand, activation, status times, CMID. */
  tally_licensing *a = open_at(root, "setup");
  rc = tally_set_log_callback(a, on_log, &log_lines, TALLY_LOG_TRACE);
  check(rc == TALLY_OK, "set_log_callback", rc);
  rc = tally_set_log_callback(a, on_log, &log_lines, 7);
  check(rc == TALLY_INVALID_ARGUMENT, "set_log_callback refuses level 7", rc);
  rc = tally_set_log_callback(a, on_log, &log_lines, TALLY_LOG_TRACE);
  rc = tally_set_timeout(a, 20000);
  check(rc == TALLY_OK, "set_timeout", rc);
  rc = tally_install_key(a, setup_key);
  check(rc == TALLY_OK, "install_key", rc);
  rc = tally_set_host(a, host);
  check(rc == TALLY_OK, "set_host", rc);
  rc = tally_set_host(a, "two words");
  check(rc == TALLY_INVALID_ARGUMENT, "set_host refuses spaces", rc);
  tally_activate_options opts = {NULL, NULL, host_trust, 0};
  tally_activation act;
  rc = tally_activate_ex(a, &opts, &act);
  check(rc == TALLY_BELOW_THRESHOLD && act.count == 1 && act.threshold == 5,
        "activate_ex at the host set by hand: below_threshold 1 of 5", rc);
  tally_status st;
  rc = tally_read_status(a, &st);
  check(rc == TALLY_OK && st.state == TALLY_STATE_INITIAL_GRACE && strlen(st.cmid) == 36 &&
            st.grace_end_ms > 0 && st.next_attempt_ms > 0 && st.validity_end_ms == 0 &&
            !st.revoked && st.has_last_attempt && st.last_result == TALLY_BELOW_THRESHOLD,
        "read_status: grace, CMID, grace end, next attempt", rc);
  printf("cmid %s grace_end_ms %lld next_attempt_ms %lld\n", st.cmid,
         (long long)st.grace_end_ms, (long long)st.next_attempt_ms);
  rc = tally_clear_host(a);
  check(rc == TALLY_OK, "clear_host", rc);

  /* A host that accepts the connection and never answers: the call's own deadline. */
  tally_activate_options slow = {silent, NULL, host_trust, 400};
  double t0 = now_seconds();
  rc = tally_activate_ex(a, &slow, &act);
  double took = now_seconds() - t0;
  check(rc == TALLY_HOST_TIMEOUT && act.code == TALLY_HOST_TIMEOUT && took < 5.0,
        "activate_ex with timeout_ms 400 at a silent host: host_timeout", rc);
  printf("timeout took %.3f s\n", took);

  /* Generalize: a new CMID, seen by the wait call. */
  tally_status before = st, after;
  bool changed = false;
  rc = tally_wait_for_change(a, &before, 300, &after, &changed);
  check(rc == TALLY_OK && !changed, "wait_for_change: no change within 300 ms", rc);
  rc = tally_generalize(a);
  check(rc == TALLY_OK, "generalize", rc);
  rc = tally_wait_for_change(a, &before, 5000, &after, &changed);
  check(rc == TALLY_OK && changed && strcmp(after.cmid, before.cmid) != 0,
        "wait_for_change sees the new CMID", rc);
  rc = tally_rearm(a);
  check(rc == TALLY_OK, "rearm", rc);
  rc = tally_uninstall_key(a);
  check(rc == TALLY_OK, "uninstall_key", rc);
  rc = tally_read_status(a, &st);
  check(rc == TALLY_OK && st.state == TALLY_STATE_UNLICENSED && st.edition[0] == 0,
        "status after uninstall: unlicensed", rc);
  tally_licensing_free(a);

  /* A MAK online: no URL says what to pass; with one, licensed for good. */
  tally_licensing *m = open_at(root, "mak-online");
  rc = tally_set_log_callback(m, on_log, &log_lines, TALLY_LOG_TRACE);
  check(rc == TALLY_OK, "set_log_callback on the MAK handle", rc);
  /* The edition's setup key names the edition; the MAK then replaces it (R25). */
  rc = tally_install_key(m, edition_key);
  check(rc == TALLY_OK, "install the edition's setup key before the MAK", rc);
  rc = tally_install_key(m, mak);
  check(rc == TALLY_OK, "install MAK", rc);
  tally_activate_options none = {NULL, NULL, auth_trust, 0};
  rc = tally_activate_ex(m, &none, &act);
  char message[512];
  tally_last_error_message(message, sizeof message);
  check(rc == TALLY_NO_HOST && strstr(message, "authority URL") != NULL,
        "activate_ex MAK without a URL: no_host naming the authority URL", rc);
  tally_activate_options online = {NULL, url, auth_trust, 10000};
  rc = tally_activate_ex(m, &online, &act);
  check(rc == TALLY_OK && act.activated, "activate_ex MAK online", rc);
  rc = tally_read_status(m, &st);
  check(rc == TALLY_OK && st.licensed && st.permanent && st.validity_end_ms == 0,
        "MAK status: licensed, permanent", rc);
  tally_licensing_free(m);

  /* A MAK offline: installation ID out, confirmation ID in. */
  tally_licensing *o = open_at(root, "mak-offline");
  rc = tally_install_key(o, edition_key);
  check(rc == TALLY_OK, "install the edition's setup key (offline)", rc);
  rc = tally_install_key(o, mak);
  check(rc == TALLY_OK, "install MAK (offline)", rc);
  char small[8];
  rc = tally_installation_id(o, small, sizeof small);
  check(rc == TALLY_INVALID_ARGUMENT && small[0] == 0, "installation_id: buffer too small", rc);
  char iid[TALLY_INSTALLATION_ID_LEN];
  rc = tally_installation_id(o, iid, sizeof iid);
  check(rc == TALLY_OK && strlen(iid) > 20, "installation_id", rc);
  printf("IID: %s\n", iid);
  fflush(stdout);
  char confirmation[512];
  if (!fgets(confirmation, sizeof confirmation, stdin)) confirmation[0] = 0;
  confirmation[strcspn(confirmation, "\n")] = 0;
  rc = tally_confirm(o, "12345 67890");
  check(rc == TALLY_KEY_NOT_USABLE, "confirm refuses a wrong confirmation ID", rc);
  rc = tally_confirm(o, confirmation);
  check(rc == TALLY_OK, "confirm", rc);
  rc = tally_read_status(o, &st);
  check(rc == TALLY_OK && st.licensed && st.permanent, "offline MAK status: permanent", rc);
  tally_licensing_free(o);

  /* NULL everywhere is refused, never a crash. */
  check(tally_uninstall_key(NULL) == TALLY_INVALID_ARGUMENT &&
            tally_wait_for_change(NULL, NULL, 0, NULL, NULL) == TALLY_INVALID_ARGUMENT &&
            tally_activate_ex(NULL, NULL, NULL) == TALLY_INVALID_ARGUMENT,
        "NULL arguments", 0);
  check(log_lines > 0, "the log callback received lines", 0);
  printf("log lines %d\n", log_lines);
  printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
