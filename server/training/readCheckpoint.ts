import { checkSideNetworkTensors } from '../../common/AdapterConfig';
import { decodeAdapterSliced } from '../../common/AdapterFile';
import { parameterNames, SideNetworkShape } from './sideNetworkSpec';
import { OptimizerState } from './TrainerOptions';

/** A checkpoint's weights, Adam state and position, or undefined when it is damaged (short, flipped, foreign). */
export async function readCheckpoint(bytes: Buffer, rec: { model: { fingerprint: string } }, shape: SideNetworkShape): Promise<{ values: Map<string, Float32Array>; state: OptimizerState; nextIndex: number; trainTokens: number } | undefined> {
  try {
    const { header, tensors } = await decodeAdapterSliced(bytes, rec.model.fingerprint);
    const names = parameterNames(shape);
    const under = (prefix: string) => new Map(names.flatMap((n) => (tensors.has(prefix + n) ? [[n, tensors.get(prefix + n)!] as const] : [])));
    for (const prefix of ['', 'adam.m.', 'adam.v.']) checkSideNetworkTensors(shape, under(prefix), prefix === '' ? undefined : Infinity);
    const { step, nextIndex, trainTokens } = header.meta as { step?: unknown; nextIndex?: unknown; trainTokens?: unknown };
    if (!Number.isSafeInteger(step) || !Number.isSafeInteger(nextIndex)) return undefined;
    return {
      values: new Map(names.map((n) => [n, tensors.get(n)!.data])),
      state: { step: step as number, m: new Map(names.map((n) => [n, tensors.get(`adam.m.${n}`)!.data])), v: new Map(names.map((n) => [n, tensors.get(`adam.v.${n}`)!.data])) },
      nextIndex: nextIndex as number,
      trainTokens: Number.isSafeInteger(trainTokens) ? (trainTokens as number) : 0,
    };
  } catch {
    return undefined;
  }
}

