#include "backends.hpp"

#include <atomic>
#include <cstdio>
#include <string>

#include "ggml-backend.h"
#include "llama.h"

#include "codedError.hpp"

namespace mobillm {

namespace {

std::atomic<bool> verboseLog{false};

// llama.cpp and ggml log from any thread; the product reports failures through
// typed errors, so their lines reach stderr only when asked for (MOBILLM_DEBUG).
void logToStderr(ggml_log_level level, const char* text, void* /*user*/) {
  if (!verboseLog.load(std::memory_order_relaxed) || text == nullptr) return;
  std::fprintf(stderr, "[llama.cpp %d] %s", static_cast<int>(level), text);
}

}  // namespace

// ensureBackends(libDir, verbose): routes llama.cpp's log, then registers
// ggml's best CPU backend from libDir unless one is already registered (when
// node-llama-cpp was loaded first in the same process).
Napi::Value EnsureBackends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  verboseLog.store(info.Length() > 1 && info[1].ToBoolean().Value());
  static std::atomic<bool> initialised{false};
  if (!initialised.exchange(true)) {
    llama_log_set(logToStderr, nullptr);
    llama_backend_init();
  }
  if (ggml_backend_dev_count() == 0) {
    const std::string dir = info[0].As<Napi::String>().Utf8Value();
    ggml_backend_load_all_from_path(dir.c_str());
  }
  const size_t n = ggml_backend_dev_count();
  if (n == 0) {
    codedError(env, "NO_BACKEND", "No ggml CPU backend could be loaded.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(n));
}


}  // namespace mobillm
