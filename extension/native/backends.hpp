// ensureBackends(libDir): ggml's CPU backend, registered once per process.
#pragma once

#include <napi.h>

namespace mobillm {

Napi::Value EnsureBackends(const Napi::CallbackInfo& info);

}  // namespace mobillm
