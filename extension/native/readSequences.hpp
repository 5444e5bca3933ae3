// Argument reader shared by the decode entry points.
#pragma once

#include <napi.h>

#include <cstdint>
#include <vector>

#include "llama.h"

namespace mobillm {

// Reads sequences (Int32Array[]) into `out`, validating count and token ids;
// on failure throws a coded JavaScript error and returns false.
bool readSequences(Napi::Env env, const Napi::Array& seqs, int nVocab, uint32_t maxSeq, std::vector<std::vector<llama_token>>& out, size_t& total);

}  // namespace mobillm
