/**
 * Written by `npm run bench:privacy` (bench/privacy.ts) from the audit it ran; do
 * not edit. For label-private frames: the share of the benchmark workspace's
 * tokens a server recovered exactly with the strongest attack (picked on public
 * text), by activation bits and the first layers not sent (bench/results/privacy.json).
 */
export const PRIVACY_AUDIT = {
  model: 'a 6-layer stand-in model',
  layers: 6,
  labelPrivate: [
    { activationBits: 8, skipLayers: 0, recovered: 0.9219, attack: 'a linear inverter fitted on public code on layer 0' },
    { activationBits: 8, skipLayers: 2, recovered: 0.8234, attack: 'a linear inverter fitted on public code on layer 2' },
    { activationBits: 8, skipLayers: 4, recovered: 0.7629, attack: 'a linear inverter fitted on public code on layer 4' },
    { activationBits: 4, skipLayers: 0, recovered: 0.9040, attack: 'a linear inverter fitted on public code on layer 0' },
    { activationBits: 4, skipLayers: 2, recovered: 0.8089, attack: 'a linear inverter fitted on public code on layer 2' },
    { activationBits: 4, skipLayers: 4, recovered: 0.7516, attack: 'a linear inverter fitted on public code on layer 4' },
  ],
} as const;
