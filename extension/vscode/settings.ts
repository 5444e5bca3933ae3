import * as vscode from 'vscode';
import type { Bits } from '../../common/ActivationQuantizer';
import { FINE_TUNE_DEFAULTS } from '../core/job/FineTuneOptions';

/** The contributed settings (package.json "contributes.configuration"), read when a job starts. */
export interface MobiSettings {
  serverUrl: string;
  model: string;
  bits: Bits;
  skipLayers: number;
  seqLen: number;
  batchSize: number;
  epochs: number;
  include: string[];
  exclude: string[];
  maxFileBytes: number;
  inlineCompletions: boolean;
  completionPrefixChars: number;
  completionSuffixChars: number;
  fimRate: number;
  labelPrivate: boolean;
  sideNetwork: 1 | 2;
}

export function readSettings(): MobiSettings {
  const c = vscode.workspace.getConfiguration('mobillm');
  const bits = c.get<number>('bits', 8);
  return {
    serverUrl: c.get<string>('serverUrl', '').trim(),
    model: c.get<string>('model', '').trim(),
    bits: bits === 4 || bits === 16 ? bits : 8,
    skipLayers: c.get<number>('skipLayers', 0),
    seqLen: c.get<number>('sequenceLength', 128),
    batchSize: c.get<number>('batchSize', 4),
    epochs: c.get<number>('epochs', 1),
    include: c.get<string[]>('include', []),
    exclude: c.get<string[]>('exclude', []),
    maxFileBytes: c.get<number>('maxFileBytes', 512 * 1024),
    inlineCompletions: c.get<boolean>('inlineCompletions.enabled', true),
    completionPrefixChars: c.get<number>('inlineCompletions.prefixChars', 1500),
    completionSuffixChars: c.get<number>('inlineCompletions.suffixChars', 500),
    fimRate: c.get<number>('fimRate', 0.5),
    labelPrivate: c.get<boolean>('labelPrivate', false),
    sideNetwork: c.get<number>('sideNetwork', FINE_TUNE_DEFAULTS.sideNetwork) === 2 ? 2 : 1,
  };
}
