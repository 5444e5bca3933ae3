// Reads the object NativeAddon.ts's NativeAdapter describes (the shape and
// constants of common/AdapterConfig.ts plus the tensors) into a SideNet for
// `model`. TypeScript validates the adapter's config first; this checks again
// what would make the side network read out of bounds.
#pragma once

#include <napi.h>

#include <memory>

#include "llama.h"

#include "SideNetwork.hpp"

namespace mobillm {

// The side network, or null after throwing ADAPTER_MODEL_MISMATCH to JavaScript.
std::unique_ptr<SideNet> readSideNet(Napi::Env env, const Napi::Value& value, const llama_model* model);

}  // namespace mobillm
