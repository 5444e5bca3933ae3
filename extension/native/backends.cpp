#include "backends.hpp"

#include <atomic>
#include <string>

#include "ggml-backend.h"
#include "llama.h"

#include "codedError.hpp"

namespace mobillm {

// ensureBackends(libDir): registers ggml's CPU backend unless one is already
// registered (node-llama-cpp registers it when it is loaded first).
Napi::Value EnsureBackends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  static std::atomic<bool> initialised{false};
  if (!initialised.exchange(true)) llama_backend_init();
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
