#!/usr/bin/env node
import * as fs from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import * as path from 'node:path';
import { packageVersion } from '../../common/packageRoot';
import { Backbone } from '../core/model/Backbone';
import { ensureDefaultModel } from '../core/model/defaultModel';
import { defaultStoreDir } from '../core/store/defaultStoreDir';
import { evaluateWorkspace } from '../core/workspace/evaluateWorkspace';
import { generate } from '../core/completion/generate';
import { MobiError } from '../core/MobiError';
import { writeTinyModel } from '../core/model/tinyModel';
import { GgmlTypeName } from '../core/model/gguf/ggmlTypes';
import { finetuneCommand, jobsCommand } from './finetuneCommand';

function intOption(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError('expected an integer');
  return n;
}

function layersOption(value: string): number[] | 'all' {
  if (value === 'all') return 'all';
  const list = value.split(',').map((s) => Number(s.trim()));
  if (list.some((n) => !Number.isInteger(n))) throw new InvalidArgumentError('expected "all" or a comma-separated list of layer indices');
  return list;
}

/** Runs a command body; prints `error[CODE]: message` and exits non-zero on failure (130 when cancelled). */
function action<A extends unknown[]>(body: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await body(...args);
      process.exit(0);
    } catch (err) {
      const e = MobiError.from(err);
      process.stderr.write(`error[${e.code}]: ${e.message}\n`);
      process.exit(e.code === 'CANCELLED' ? 130 : 1);
    }
  };
}

/** The backbone of --model (default: the built-in tiny model), with --adapter in use when given. */
async function openWithAdapter(o: { model?: string; adapter?: string; store: string }, options: { contextSize: number; maxSequences: number }): Promise<Backbone> {
  const bb = await Backbone.open(o.model ?? ensureDefaultModel(o.store), options);
  if (!o.adapter) return bb;
  try {
    await bb.useAdapterFile(o.adapter);
    return bb;
  } catch (err) {
    bb.dispose();
    throw err;
  }
}


export function buildProgram(): Command {
  const program = new Command('mobillm').description('MobiLLM device tools: frozen GGUF backbone on this machine, side network on a server.');
  program.version(packageVersion(), '-V, --version', 'print the version');
  program.showSuggestionAfterError();

  const model = program.command('model').description('Model files');
  model
    .command('tiny')
    .description('Write the built-in tiny random-weight llama model (GGUF v3)')
    .requiredOption('--out <file>', 'output .gguf file')
    .option('--seed <n>', 'weight seed', intOption, 1)
    .option('--layers <n>', 'transformer blocks', intOption, 4)
    .option('--embd <n>', 'hidden size', intOption, 64)
    .option('--heads <n>', 'attention heads', intOption, 4)
    .option('--kv-heads <n>', 'key/value heads (GQA)', intOption)
    .option('--ff <n>', 'feed-forward width', intOption)
    .option('--type <type>', 'f32 | f16 | q8_0 | q4_0', 'f32')
    .option('--vocab <file>', 'take the tokenizer from this GGUF (e.g. a vocab-only file)')
    .option('--tied', 'tie the head to the token embedding (no output.weight)')
    .action(
      action((o: { out: string; seed: number; layers: number; embd: number; heads: number; kvHeads?: number; ff?: number; type: string; vocab?: string; tied?: boolean }) => {
        writeTinyModel({ out: o.out, seed: o.seed, layers: o.layers, embd: o.embd, heads: o.heads, kvHeads: o.kvHeads, ff: o.ff, type: o.type as GgmlTypeName, vocab: o.vocab, untiedHead: !o.tied });
        const size = fs.statSync(o.out).size;
        process.stdout.write(`${JSON.stringify({ out: o.out, bytes: size })}\n`);
      }),
    );

  model
    .command('info')
    .description('Describe a model (local path or hf: URI)')
    .argument('<model>', 'model file or hf:owner/repo:quant')
    .option('--json', 'print the description as one JSON line')
    .action(
      action(async (spec: string, o: { json?: boolean }) => {
        const bb = await Backbone.open(spec, { contextSize: 64, maxSequences: 1 });
        try {
          const i = bb.info;
          if (o.json) process.stdout.write(`${JSON.stringify(i)}\n`);
          else {
            process.stdout.write(
              [
                `${path.basename(i.path)}: ${i.architecture}, ${(i.parameters / 1e6).toFixed(1)} M parameters, ${i.quantization}, ${(i.fileSizeBytes / 2 ** 20).toFixed(1)} MiB`,
                `  ${i.layers} layers, hidden size ${i.hiddenSize}, ${i.attentionHeads} attention heads (${i.kvAttentionHeads} key/value), vocabulary ${i.vocabularySize}`,
                `  trained context ${i.trainingContext} tokens; head ${i.headTensor}; final ${i.head.norm === 'layer' ? 'LayerNorm' : 'RMSNorm'} epsilon ${Number(i.normEpsilon.toPrecision(3))}` +
                  (i.head.logitMultiplier !== 1 ? `; logits x ${Number(i.head.logitMultiplier.toPrecision(4))}` : '') +
                  (i.head.softCap > 0 ? `; logits soft-capped at ${i.head.softCap}` : ''),
              ].join('\n') + '\n',
            );
          }
        } finally {
          bb.dispose();
        }
      }),
    );

  program
    .command('capture')
    .description('Run the backbone on a text and write the chosen layers\' outputs as float32 LE [layers][tokens][nEmbd]')
    .requiredOption('--model <file>', 'model file or hf: URI')
    .option('--text <str>', 'text to run')
    .option('--file <path>', 'file whose text to run')
    .option('--layers <list>', '"all" or e.g. 0,3,5', layersOption, 'all' as const)
    .requiredOption('--out <file>', 'output binary file')
    .action(
      action(async (o: { model: string; text?: string; file?: string; layers: number[] | 'all'; out: string }) => {
        if ((o.text === undefined) === (o.file === undefined)) throw new MobiError('BAD_ARGUMENT', 'Give exactly one of --text or --file.');
        let text: string;
        try {
          text = o.text ?? fs.readFileSync(o.file!, 'utf8');
        } catch (err) {
          throw new MobiError('IO_ERROR', `Cannot read ${o.file}.`, { cause: err });
        }
        if (text.length === 0) throw new MobiError('EMPTY_INPUT', 'The text is empty: there is nothing to run.');
        const bb = await Backbone.open(o.model, { maxSequences: 1 });
        try {
          const layers = bb.resolveLayers(o.layers);
          const tokens = bb.tokenize(text);
          const cap = await bb.capture([tokens], layers);
          const tmp = `${o.out}.tmp-${process.pid}`;
          const fd = fs.openSync(tmp, 'w');
          try {
            for (const block of cap.data) fs.writeSync(fd, new Uint8Array(block.buffer, block.byteOffset, block.byteLength));
          } finally {
            fs.closeSync(fd);
          }
          fs.renameSync(tmp, o.out);
          process.stdout.write(`${JSON.stringify({ tokens: Array.from(tokens), layers, nEmbd: cap.hiddenSize })}\n`);
        } finally {
          bb.dispose();
        }
      }),
    );
  program
    .command('eval')
    .description('Held-out loss of a workspace on this device (same split as finetune), with or without an adapter')
    .requiredOption('--workspace <dir>', 'folder of source code')
    .option('--model <file|hf:uri>', 'GGUF backbone (default: the built-in tiny model)')
    .option('--adapter <file>', 'adapter file from a fine-tune job')
    .option('--seq-len <n>', 'tokens per sequence', intOption, 128)
    .option('--seed <n>', 'seed of the split', intOption, 1)
    .option('--store <dir>', 'device store', defaultStoreDir())
    .option('--json', 'print {"heldOutLoss","tokens"} as the last line')
    .action(
      action(async (o: { workspace: string; model?: string; adapter?: string; seqLen: number; seed: number; store: string; json?: boolean }) => {
        const bb = await openWithAdapter(o, { contextSize: 4 * (o.seqLen + 1), maxSequences: 4 });
        try {
          const r = await evaluateWorkspace(bb, o.workspace, { seqLen: o.seqLen, seed: o.seed });
          if (o.json) process.stdout.write(`${JSON.stringify({ ...r, adapter: o.adapter ?? null })}\n`);
          else process.stdout.write(`held-out loss ${r.heldOutLoss.toFixed(4)} (perplexity ${Math.exp(r.heldOutLoss).toFixed(2)}) over ${r.tokens} tokens, ${o.adapter ? `with the adapter ${o.adapter}` : 'base model (no adapter)'}\n`);
        } finally {
          bb.dispose();
        }
      }),
    );

  program
    .command('generate')
    .description('Continue a prompt with the backbone, with or without an adapter')
    .option('--model <file|hf:uri>', 'GGUF backbone (default: the built-in tiny model)')
    .option('--adapter <file>', 'adapter file')
    .requiredOption('--prompt <text>', 'prompt')
    .option('--tokens <n>', 'most new tokens', intOption, 64)
    .option('--temperature <x>', '0 = greedy', Number, 0)
    .option('--top-p <x>', 'nucleus mass', Number, 1)
    .option('--store <dir>', 'device store', defaultStoreDir())
    .action(
      action(async (o: { model?: string; adapter?: string; prompt: string; tokens: number; temperature: number; topP: number; store: string }) => {
        const bb = await openWithAdapter(o, { contextSize: 2048, maxSequences: 1 });
        try {
          const g = await generate(bb, o.prompt, { maxTokens: o.tokens, temperature: o.temperature, topP: o.topP, onText: (t) => process.stdout.write(t) });
          process.stdout.write('\n');
          process.stderr.write(`${g.tokens.length} tokens (${g.stoppedBy})\n`);
        } finally {
          bb.dispose();
        }
      }),
    );

  const run = async (body: () => Promise<void>): Promise<void> => action(body)();
  program.addCommand(finetuneCommand(run));
  program.addCommand(jobsCommand(run));
  return program;
}

if (require.main === module) {
  void buildProgram().parseAsync(process.argv);
}
