import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { NativeError, nativeAddonLocation } from '../../../../extension/native/NativeAddon';
import { NATIVE_TARGET_NAMES, NATIVE_TARGETS, targetOf } from '../../../../extension/native/targets';

describe('native targets', () => {
  it('names VS Code\'s targets and maps a machine to its own, or to none', () => {
    assert.deepEqual(NATIVE_TARGET_NAMES, ['linux-x64', 'linux-arm64', 'win32-x64', 'darwin-arm64', 'darwin-x64']);
    assert.equal(targetOf('linux', 'x64'), 'linux-x64');
    assert.equal(targetOf('darwin', 'arm64'), 'darwin-arm64');
    assert.equal(targetOf('win32', 'x64'), 'win32-x64');
    assert.equal(targetOf('win32', 'arm64'), undefined);
    assert.equal(targetOf('freebsd', 'x64'), undefined);
    assert.equal(targetOf('linux', 'ia32'), undefined);
    // Each target names node-llama-cpp's package for it; a target without ONNX Runtime binaries says so by leaving it out.
    for (const name of NATIVE_TARGET_NAMES) assert.ok(NATIVE_TARGETS[name].llama.length > 0, name);
    assert.equal('onnxruntime' in NATIVE_TARGETS['darwin-x64'], false);
  });

  it('an unsupported platform, or a missing addon, is NATIVE_ADDON_MISSING naming the platform and the supported targets', () => {
    const codeOf = (f: () => unknown): { code: string; message: string } => {
      try {
        f();
      } catch (err) {
        assert.ok(err instanceof NativeError);
        return { code: err.code, message: err.message };
      }
      return assert.fail('no error');
    };
    const unsupported = codeOf(() => nativeAddonLocation('freebsd', 'x64'));
    assert.equal(unsupported.code, 'NATIVE_ADDON_MISSING');
    assert.match(unsupported.message, /no build for freebsd-x64; it runs on linux-x64, linux-arm64, win32-x64, darwin-arm64, darwin-x64/);
    // darwin-arm64 is never built on this machine: its addon is missing here.
    const missing = codeOf(() => nativeAddonLocation('darwin', 'arm64'));
    assert.equal(missing.code, 'NATIVE_ADDON_MISSING');
    assert.match(missing.message, /native addon for darwin-arm64 is missing .*install the MobiLLM package built for darwin-arm64/);
    // This machine's is there, beside its llama.cpp libraries.
    const here = nativeAddonLocation();
    assert.ok(fs.existsSync(here.file));
    assert.ok(fs.readdirSync(here.libDir).some((f) => /llama/.test(f)), 'llama.cpp beside the addon');
  });
});
