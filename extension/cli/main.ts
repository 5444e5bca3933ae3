#!/usr/bin/env node
import * as fs from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { Backbone } from '../core/Backbone';
import { MobiError } from '../core/MobiError';
import { writeTinyModel } from '../core/tinyModel';
import { GgmlTypeName } from '../core/gguf/ggmlTypes';

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

/** Runs a command body; prints `error[CODE]: message` and exits non-zero on failure. */
function action<A extends unknown[]>(body: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await body(...args);
      process.exit(0);
    } catch (err) {
      const e = err instanceof MobiError ? err : new MobiError('IO_ERROR', err instanceof Error ? err.message : String(err));
      process.stderr.write(`error[${e.code}]: ${e.message}\n`);
      process.exit(1);
    }
  };
}

export function buildProgram(): Command {
  const program = new Command('mobillm').description('MobiLLM device tools: frozen GGUF backbone on this machine, side network on a server.');
  program.showHelpAfterError();

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
    .action(
      action(async (spec: string) => {
        const bb = await Backbone.open(spec, { contextSize: 64, maxSequences: 1 });
        try {
          process.stdout.write(`${JSON.stringify(bb.info)}\n`);
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
  return program;
}

if (require.main === module) {
  void buildProgram().parseAsync(process.argv);
}
