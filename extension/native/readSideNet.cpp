#include "readSideNet.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "codedError.hpp"

namespace mobillm {

namespace {

// A whole number in [lo, hi] at o[key], or false (nothing thrown: the caller
// throws one coded error). Every value is type-checked before it is read, so
// no N-API call here can leave an exception pending.
bool readInt(const Napi::Object& o, const char* key, int lo, int hi, int& out) {
  const Napi::Value v = o.Get(key);
  if (!v.IsNumber()) return false;
  const double x = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(x) || x != std::floor(x) || x < lo || x > hi) return false;
  out = static_cast<int>(x);
  return true;
}

bool readPositive(const Napi::Object& o, const char* key, float& out) {
  const Napi::Value v = o.Get(key);
  if (!v.IsNumber()) return false;
  const double x = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(x) || x <= 0) return false;
  out = static_cast<float>(x);
  return true;
}

}  // namespace

std::unique_ptr<SideNet> readSideNet(Napi::Env env, const Napi::Value& value, const llama_model* model) {
  auto fail = [&](const char* code, const std::string& msg) {
    codedError(env, code, msg).ThrowAsJavaScriptException();
    return std::unique_ptr<SideNet>();
  };
  if (!value.IsObject()) return fail("ADAPTER_CORRUPT", "The adapter description is not an object.");
  const Napi::Object o = value.As<Napi::Object>();
  auto net = std::make_unique<SideNet>();
  net->nLayer = llama_model_n_layer(model);
  const int nEmbd = llama_model_n_embd(model);
  float temperature = 0;
  if (!readInt(o, "d", 1, 1 << 20, net->d) || !readInt(o, "r", 1, 1 << 20, net->r) || !readInt(o, "b", 1, 1 << 20, net->b) ||
      !readPositive(o, "adapterEps", net->adapterEps) || !readPositive(o, "gateTemperature", temperature)) {
    return fail("ADAPTER_CORRUPT", "The adapter's shape or constants are damaged.");
  }
  // Optional: absent means side network 1 (no attention blocks).
  if (o.Has("sideNetwork") && !o.Get("sideNetwork").IsUndefined() && !readInt(o, "sideNetwork", 1, 2, net->sideNetwork)) {
    return fail("ADAPTER_CORRUPT", "The adapter's side-network design is damaged.");
  }
  const Napi::Value join = o.Get("joinAfterNorm");
  if (!join.IsUndefined() && !join.IsBoolean()) return fail("ADAPTER_CORRUPT", "The adapter's join is damaged.");
  net->joinAfterNorm = join.IsBoolean() && join.As<Napi::Boolean>().Value();
  const Napi::Value multiplier = o.Get("logitMultiplier");
  if (!multiplier.IsUndefined()) {
    const double m = multiplier.IsNumber() ? multiplier.As<Napi::Number>().DoubleValue() : 0;
    if (!(m > 0) || !std::isfinite(m)) return fail("BAD_ARGUMENT", "The model's logit multiplier must be a positive number.");
    net->logitMultiplier = static_cast<float>(m);
  }
  const Napi::Value tappedValue = o.Get("tappedLayers");
  const Napi::Value tensorsValue = o.Get("tensors");
  if (!tappedValue.IsArray() || !tensorsValue.IsObject()) return fail("ADAPTER_CORRUPT", "The adapter's layers or tensors are damaged.");
  const Napi::Array tapped = tappedValue.As<Napi::Array>();
  // How many blocks attend comes from TypeScript (attentionBlocks() in common/AdapterConfig.ts); the last never does.
  if (!readInt(o, "attentionBlocks", 0, static_cast<int>(tapped.Length()) - 1, net->attentionBlocks)) {
    return fail("ADAPTER_CORRUPT", "The adapter's attention blocks are damaged.");
  }
  if (net->attentionBlocks > 0) {
    int heads = 0;
    if (!readInt(o, "attentionHeads", 1, net->r, heads) || net->r % (2 * heads) != 0) {
      return fail("ADAPTER_CORRUPT", "The adapter's attention heads do not divide its width.");
    }
    net->setAttentionHeads(heads);
  }
  const Napi::Object tensors = tensorsValue.As<Napi::Object>();
  if (net->d != nEmbd) return fail("ADAPTER_MODEL_MISMATCH", "The adapter's shape does not fit this model.");
  net->slotOfLayer.assign(static_cast<size_t>(net->nLayer), -1);
  auto take = [&](const std::string& name, size_t n, std::vector<float>& dst) {
    const Napi::Value v = tensors.Get(name);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) return false;
    Napi::Float32Array a = v.As<Napi::Float32Array>();
    if (a.ElementLength() != n) return false;
    dst.assign(a.Data(), a.Data() + n);
    for (float x : dst) {
      if (!std::isfinite(x)) return false;
    }
    return true;
  };
  int prev = -1;
  for (uint32_t k = 0; k < tapped.Length(); ++k) {
    const Napi::Value lv = tapped.Get(k);
    if (!lv.IsNumber()) return fail("ADAPTER_CORRUPT", "The adapter's tapped layers are damaged.");
    const double layerValue = lv.As<Napi::Number>().DoubleValue();
    if (!(layerValue > prev) || layerValue >= net->nLayer || layerValue != std::floor(layerValue)) {
      return fail("ADAPTER_MODEL_MISMATCH", "The adapter's tapped layers do not fit this model.");
    }
    const int layer = static_cast<int>(layerValue);
    prev = layer;
    net->slotOfLayer[layer] = static_cast<int>(k);
    net->down.emplace_back();
    net->mid.emplace_back();
    net->up.emplace_back();
    for (auto* w : {&net->wq, &net->wk, &net->wv, &net->wo}) w->emplace_back();
    std::vector<float> alpha;
    const std::string ks = std::to_string(k);
    if (!take("down." + ks, static_cast<size_t>(net->d) * net->r, net->down.back()) ||
        !take("mid." + ks, static_cast<size_t>(net->r) * net->b, net->mid.back()) ||
        !take("up." + ks, static_cast<size_t>(net->b) * net->r, net->up.back()) || !take("alpha." + ks, 1, alpha)) {
      return fail("ADAPTER_CORRUPT", "The adapter's tensors do not match its shape.");
    }
    if (net->attends(static_cast<int>(k))) {
      const size_t rr = static_cast<size_t>(net->r) * net->r;
      if (!take("wq." + ks, rr, net->wq.back()) || !take("wk." + ks, rr, net->wk.back()) ||
          !take("wv." + ks, rr, net->wv.back()) || !take("wo." + ks, rr, net->wo.back())) {
        return fail("ADAPTER_CORRUPT", "The adapter's attention tensors do not match its shape.");
      }
    }
    net->mu.push_back(1.0f / (1.0f + std::exp(-alpha[0] / temperature)));
  }
  if (prev != net->nLayer - 1) return fail("ADAPTER_MODEL_MISMATCH", "The adapter must tap the model's last layer.");
  if (!take("out", static_cast<size_t>(net->r) * net->d, net->out)) return fail("ADAPTER_CORRUPT", "The adapter's tensors do not match its shape.");
  // Optional: the head update (absent or 0: none).
  const Napi::Value rank = o.Get("headRank");
  if (!rank.IsUndefined()) {
    if (!readInt(o, "headRank", 0, MAX_HEAD_RANK, net->headRank) || (net->headRank > 0 && !readInt(o, "vocab", 1, 1 << 30, net->vocab))) {
      return fail("ADAPTER_CORRUPT", "The adapter's head update is damaged.");
    }
  }
  if (net->headRank > 0) {
    if (net->vocab != llama_vocab_n_tokens(llama_model_get_vocab(model))) return fail("ADAPTER_MODEL_MISMATCH", "The adapter's head update does not fit this model's vocabulary.");
    const size_t k = static_cast<size_t>(net->headRank);
    if (!take("head_a", static_cast<size_t>(net->d) * k, net->headA) || !take("head_b", static_cast<size_t>(net->vocab) * k, net->headB)) {
      return fail("ADAPTER_CORRUPT", "The adapter's head update does not match its shape.");
    }
  }
  return net;
}

}  // namespace mobillm
