import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { describeHead, SUPPORTED_ARCHITECTURES } from '../../../../../extension/core/model/headDescription';
import { readGgufFile } from '../../../../../extension/core/model/gguf/GgufFile';
import { GgufWriter } from '../../../../../extension/core/model/gguf/GgufWriter';
import { GgmlType } from '../../../../../extension/core/model/gguf/ggmlTypes';
import { expectCode } from '../../../../helpers/expectCode';
import { tmpDir } from '../../../../helpers/workspaces';

const D = 4;
const VOCAB = 3;

/** A GGUF holding only what describeHead reads: the architecture, its keys, and small float32 tensors by name. */
function file(arch: string, keys: Record<string, number>, tensors: string[]): string {
  const w = new GgufWriter().string('general.architecture', arch);
  for (const [k, v] of Object.entries(keys)) w.f32(`${arch}.${k}`, v);
  for (const name of tensors) {
    const shape = name === 'output_norm.weight' || name === 'output_norm.bias' ? [D] : name === 'output.bias' ? [VOCAB] : name === 'output.scale' ? [1] : [D, VOCAB];
    w.tensor(name, shape, GgmlType.F32, () => Buffer.alloc(4 * shape.reduce((a, b) => a * b, 1)));
  }
  const out = path.join(tmpDir('head-description'), `${arch}.gguf`);
  w.write(out);
  return out;
}

const EPS = { 'attention.layer_norm_rms_epsilon': 1e-6 };
const TENSORS = ['token_embd.weight', 'output_norm.weight'];
const describe_ = (arch: string, keys: Record<string, number>, tensors: string[]): ReturnType<typeof describeHead> => describeHead(readGgufFile(file(arch, keys, tensors)), arch);

describe('headDescription: what each architecture does after its last layer', () => {
  it('takes the head from output.weight, or the embedding when it is absent; gemma\'s is always the embedding', () => {
    assert.equal(describe_('llama', EPS, [...TENSORS, 'output.weight']).tensor, 'output.weight');
    assert.equal(describe_('qwen2', EPS, TENSORS).tensor, 'token_embd.weight');
    assert.equal(describe_('gemma', EPS, [...TENSORS, 'output.weight']).tensor, 'token_embd.weight');
    assert.equal(describe_('gemma3', EPS, [...TENSORS, 'output.weight']).tensor, 'output.weight');
    const d = describe_('phi3', { 'attention.layer_norm_rms_epsilon': 1e-5 }, TENSORS);
    assert.ok(Math.abs(d.epsilon - 1e-5) < 1e-12 && d.norm === 'rms' && d.logitMultiplier === 1);
  });

  it('reads granite\'s logit scale as a multiplier of 1 / logit_scale, and requires it as llama.cpp does', async () => {
    assert.equal(describe_('granite', { ...EPS, logit_scale: 8 }, TENSORS).logitMultiplier, 0.125);
    await expectCode(() => describe_('granite', EPS, TENSORS), 'NOT_GGUF');
    await expectCode(() => describe_('granite', { ...EPS, logit_scale: 0 }, TENSORS), 'NOT_GGUF');
  });

  it('reads the soft cap with llama.cpp\'s defaults: gemma2 30 unless a file says otherwise, gemma3 none unless a file sets it', async () => {
    assert.equal(describe_('gemma2', EPS, TENSORS).softCap, 30);
    assert.equal(describe_('gemma2', { ...EPS, final_logit_softcapping: 0 }, TENSORS).softCap, 0);
    assert.equal(describe_('gemma3', EPS, TENSORS).softCap, 0);
    assert.equal(describe_('gemma3', { ...EPS, final_logit_softcapping: 20 }, TENSORS).softCap, 20);
    assert.equal(describe_('llama', { ...EPS, final_logit_softcapping: 20 }, TENSORS).softCap, 0, 'llama\'s graph reads no cap');
    await expectCode(() => describe_('gemma2', { ...EPS, final_logit_softcapping: -1 }, TENSORS), 'NOT_GGUF');
  });

  it('reads starcoder2\'s LayerNorm with its own epsilon key, and requires its bias as llama.cpp does', async () => {
    const d = describe_('starcoder2', { 'attention.layer_norm_epsilon': 1e-5 }, [...TENSORS, 'output_norm.bias']);
    assert.equal(d.norm, 'layer');
    assert.ok(Math.abs(d.epsilon - 1e-5) < 1e-12);
    await expectCode(() => describe_('starcoder2', { 'attention.layer_norm_epsilon': 1e-5 }, TENSORS), 'NOT_GGUF');
    await expectCode(() => describe_('starcoder2', EPS, [...TENSORS, 'output_norm.bias']), 'NOT_GGUF');
  });

  it('refuses by name what it does not compute: biases on an RMSNorm or the logits, a head scale; an architecture it does not describe', async () => {
    assert.throws(() => describe_('qwen2', EPS, [...TENSORS, 'output.bias']), /output\.bias/);
    assert.throws(() => describe_('llama', EPS, [...TENSORS, 'output_norm.bias']), /output_norm\.bias/);
    assert.throws(() => describe_('llama', EPS, [...TENSORS, 'output.scale']), /output\.scale/);
    assert.throws(() => describe_('mamba', EPS, TENSORS), (e: Error & { code?: string }) => e.code === 'UNSUPPORTED_ARCHITECTURE' && e.message.includes(SUPPORTED_ARCHITECTURES.join(', ')));
    await expectCode(() => describe_('llama', {}, TENSORS), 'NOT_GGUF');
    await expectCode(() => describe_('llama', EPS, ['output_norm.weight']), 'NOT_GGUF');
  });

  it('accepts every architecture it describes', () => {
    assert.deepEqual(SUPPORTED_ARCHITECTURES, ['llama', 'qwen2', 'qwen3', 'phi3', 'gemma', 'gemma2', 'gemma3', 'granite', 'starcoder2']);
  });
});
