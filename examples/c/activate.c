/*
 * activate STATE_DIR KEY HOST:PORT TRUST_FILE
 *
 * Installs KEY (an edition's setup key), activates at HOST:PORT trusting the authority key in
 * TRUST_FILE, and prints the status. Exits 0 when activated, 2 when the host's count is still
 * below the edition's threshold (the installation stays in grace and retries later), 1 on any
 * error. Build (see docs/EMBEDDING.md):
 *
 *   cc -Wall -Werror -I crates/tally-ffi/include examples/c/activate.c \
 *      target/release/libtally.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o activate
 */
#include <stdio.h>

#include "tally.h"

static const char *state_name(tally_license_state s) {
  switch (s) {
    case TALLY_STATE_UNLICENSED: return "unlicensed";
    case TALLY_STATE_INITIAL_GRACE: return "initial grace";
    case TALLY_STATE_LICENSED: return "licensed";
    case TALLY_STATE_NOTIFICATION: return "notification";
    case TALLY_STATE_OUT_OF_TOLERANCE: return "out of tolerance";
  }
  return "unknown";
}

/* Prints what went wrong: the code, its name and the library's message for this thread. */
static int fail(const char *what, tally_result rc) {
  char message[512];
  tally_last_error_message(message, sizeof message);
  fprintf(stderr, "%s failed: 0x%08X %s: %s\n", what, (unsigned)rc, tally_result_name(rc),
          message);
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s STATE_DIR KEY HOST:PORT TRUST_FILE\n", argv[0]);
    return 1;
  }
  tally_licensing *licensing = NULL;
  tally_result rc = tally_licensing_open(argv[1], NULL, &licensing);
  if (rc != TALLY_OK) return fail("open", rc);

  int exit_code = 1;
  rc = tally_install_key(licensing, argv[2]);
  if (rc != TALLY_OK) {
    exit_code = fail("install key", rc);
    goto done;
  }

  tally_activation activation;
  rc = tally_activate(licensing, argv[3], argv[4], &activation);
  if (rc != TALLY_OK && rc != TALLY_BELOW_THRESHOLD) {
    exit_code = fail("activate", rc);
    goto done;
  }
  printf("activation: %s (0x%08X), count %u of %u\n", tally_result_name(rc), (unsigned)rc,
         (unsigned)activation.count, (unsigned)activation.threshold);

  tally_status status;
  tally_result src = tally_read_status(licensing, &status);
  if (src != TALLY_OK) {
    exit_code = fail("status", src);
    goto done;
  }
  printf("status: %s, edition %s, %s%u days left, last result %s, count %u\n",
         state_name(status.state), status.edition[0] ? status.edition : "(none)",
         status.permanent ? "permanent, " : "", (unsigned)status.days_left,
         status.has_last_attempt ? tally_result_name(status.last_result) : "(none)",
         (unsigned)status.count);
  exit_code = activation.activated ? 0 : 2;

done:
  tally_licensing_free(licensing);
  return exit_code;
}
