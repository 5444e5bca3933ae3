#include "readSideNet.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "codedError.hpp"

namespace mobillm {

std::unique_ptr<SideNet> readSideNet(Napi::Env env, const Napi::Value& value, const llama_model* model) {
  const Napi::Object o = value.As<Napi::Object>();
  auto net = std::make_unique<SideNet>();
  net->d = o.Get("d").As<Napi::Number>().Int32Value();
  net->r = o.Get("r").As<Napi::Number>().Int32Value();
  net->b = o.Get("b").As<Napi::Number>().Int32Value();
  net->adapterEps = o.Get("adapterEps").As<Napi::Number>().FloatValue();
  const float temperature = o.Get("gateTemperature").As<Napi::Number>().FloatValue();
  net->nLayer = llama_model_n_layer(model);
  const Napi::Array tapped = o.Get("tappedLayers").As<Napi::Array>();
  const Napi::Object tensors = o.Get("tensors").As<Napi::Object>();
  auto bad = [&](const std::string& msg) {
    codedError(env, "ADAPTER_MODEL_MISMATCH", msg).ThrowAsJavaScriptException();
    return std::unique_ptr<SideNet>();
  };
  if (net->d != llama_model_n_embd(model) || net->r < 1 || net->b < 1 || temperature <= 0) return bad("The adapter's shape does not fit this model.");
  net->slotOfLayer.assign(static_cast<size_t>(net->nLayer), -1);
  int prev = -1;
  auto take = [&](const std::string& name, size_t n, std::vector<float>& dst) {
    Napi::Value v = tensors.Get(name);
    if (!v.IsTypedArray()) return false;
    Napi::Float32Array a = v.As<Napi::Float32Array>();
    if (a.ElementLength() != n) return false;
    dst.assign(a.Data(), a.Data() + n);
    return true;
  };
  for (uint32_t k = 0; k < tapped.Length(); ++k) {
    const int layer = tapped.Get(k).As<Napi::Number>().Int32Value();
    if (layer <= prev || layer >= net->nLayer) return bad("The adapter's tapped layers do not fit this model.");
    prev = layer;
    net->slotOfLayer[layer] = static_cast<int>(k);
    net->down.emplace_back();
    net->mid.emplace_back();
    net->up.emplace_back();
    std::vector<float> alpha;
    const std::string ks = std::to_string(k);
    if (!take("down." + ks, static_cast<size_t>(net->d) * net->r, net->down.back()) ||
        !take("mid." + ks, static_cast<size_t>(net->r) * net->b, net->mid.back()) ||
        !take("up." + ks, static_cast<size_t>(net->b) * net->r, net->up.back()) || !take("alpha." + ks, 1, alpha)) {
      return bad("The adapter's tensors do not match its shape.");
    }
    net->mu.push_back(1.0f / (1.0f + std::exp(-alpha[0] / temperature)));
  }
  if (prev != net->nLayer - 1) return bad("The adapter must tap the model's last layer.");
  if (!take("out", static_cast<size_t>(net->r) * net->d, net->out)) return bad("The adapter's tensors do not match its shape.");
  return net;
}

}  // namespace mobillm
