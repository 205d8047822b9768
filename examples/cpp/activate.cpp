// activate STATE_DIR KEY HOST:PORT TRUST_FILE, in C++17: the same as examples/c/activate.c,
// with the handle owned by a std::unique_ptr (RAII) and failures thrown as exceptions carrying
// the result code. Exits 0 when activated, 2 below the threshold, 1 on any error.
//
//   c++ -std=c++17 -Wall -Werror -I crates/tally-ffi/include examples/cpp/activate.cpp
//       target/release/libtally.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o activate

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

#include "tally.h"

namespace tally {

// A failed call: the result code and the library's message for this thread.
class Error : public std::runtime_error {
 public:
  Error(const std::string &what, tally_result code)
      : std::runtime_error(what + ": " + tally_result_name(code) + ": " + last_message()),
        code_(code) {}
  tally_result code() const noexcept { return code_; }

 private:
  static std::string last_message() {
    std::string message(tally_last_error_message(nullptr, 0) + 1, '\0');
    message.resize(tally_last_error_message(message.data(), message.size()));
    return message;
  }
  tally_result code_;
};

// The handle is freed exactly once, whatever path leaves the scope.
struct Free {
  void operator()(tally_licensing *h) const noexcept { tally_licensing_free(h); }
};

class Licensing {
 public:
  explicit Licensing(const std::string &state_dir) {
    tally_licensing *raw = nullptr;
    check("open", tally_licensing_open(state_dir.c_str(), nullptr, &raw));
    handle_.reset(raw);
  }

  void install_key(const std::string &key) {
    check("install key", tally_install_key(handle_.get(), key.c_str()));
  }

  // Below the threshold is an answer, not an error.
  tally_activation activate(const std::string &host, const std::string &trust) {
    tally_activation a{};
    tally_result rc = tally_activate(handle_.get(), host.c_str(), trust.c_str(), &a);
    if (rc != TALLY_OK && rc != TALLY_BELOW_THRESHOLD) throw Error("activate", rc);
    return a;
  }

  tally_status status() const {
    tally_status s{};
    check("status", tally_read_status(handle_.get(), &s));
    return s;
  }

 private:
  static void check(const char *what, tally_result rc) {
    if (rc != TALLY_OK) throw Error(what, rc);
  }
  std::unique_ptr<tally_licensing, Free> handle_;
};

}  // namespace tally

int main(int argc, char **argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s STATE_DIR KEY HOST:PORT TRUST_FILE\n", argv[0]);
    return 1;
  }
  try {
    tally::Licensing licensing(argv[1]);
    licensing.install_key(argv[2]);
    tally_activation a = licensing.activate(argv[3], argv[4]);
    tally_status s = licensing.status();
    std::printf("activation: %s, count %u of %u; status: licensed=%d permanent=%d days_left=%u edition=%s\n",
                tally_result_name(a.code), static_cast<unsigned>(a.count),
                static_cast<unsigned>(a.threshold), s.licensed ? 1 : 0, s.permanent ? 1 : 0,
                static_cast<unsigned>(s.days_left), s.edition);
    return a.activated ? 0 : 2;
  } catch (const tally::Error &e) {
    std::fprintf(stderr, "%s (0x%08X)\n", e.what(), static_cast<unsigned>(e.code()));
    return 1;
  }
}
