// readTensor(path, name, rowStart?, rowCount?): a GGUF tensor as float32.
#pragma once

#include <napi.h>

namespace mobillm {

Napi::Value ReadTensor(const Napi::CallbackInfo& info);
// readTensorAsync(path, name, rowStart?, rowCount?): the same, read and converted on libuv's pool.
Napi::Value ReadTensorAsync(const Napi::CallbackInfo& info);

}  // namespace mobillm
