// Errors thrown to JavaScript carry a stable `code` (one of the device's
// MobiError codes, extension/core/MobiError.ts) besides their message.
#pragma once

#include <napi.h>

#include <string>

namespace mobillm {

inline Napi::Error codedError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

}  // namespace mobillm
