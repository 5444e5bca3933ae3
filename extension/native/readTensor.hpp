// readTensor(path, name, rowStart?, rowCount?): a GGUF tensor as float32.
#pragma once

#include <napi.h>

namespace mobillm {

Napi::Value ReadTensor(const Napi::CallbackInfo& info);

}  // namespace mobillm
