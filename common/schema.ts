/**
 * The schema language of the contract: one object literal per message (or
 * file header) is both the run-time validator (`checkSchema`) and, through
 * `Fields<>`, the compile-time type, so the two cannot drift apart.
 *
 *   'string' | 'uuid' | 'uint' | 'number' | 'boolean' | 'uint[]' | 'json'   a scalar
 *   'uint?' (any scalar with '?')                                  optional
 *   ['a', 'b'] or [4, 8] as a readonly tuple                       one of these values
 *   optionalOneOf([1, 2])                                          one of these, or absent
 *   { ... }                                                        a nested schema
 */

type Scalar = 'string' | 'uuid' | 'uint' | 'number' | 'boolean' | 'uint[]' | 'json';

/** A job id: a lower-case RFC 4122 UUID, as the server makes them (it reaches file names on both sides). */
export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** One of `values`, or absent. */
export interface OptionalOneOf<V extends string | number = string | number> {
  readonly optionalOneOf: readonly V[];
}
export type Kind = Scalar | `${Scalar}?` | readonly (string | number)[] | OptionalOneOf | Schema;

export function optionalOneOf<const V extends string | number>(values: readonly V[]): OptionalOneOf<V> {
  return { optionalOneOf: values };
}
export interface Schema {
  readonly [field: string]: Kind;
}

/** Longest string and longest list a schema accepts. */
const MAX_STRING_CHARS = 4096;
const MAX_LIST_ITEMS = 4096;

type TypeOfScalar<K> = K extends 'string' | 'uuid'
  ? string
  : K extends 'uint' | 'number'
    ? number
    : K extends 'boolean'
      ? boolean
      : K extends 'uint[]'
        ? number[]
        : K extends 'json'
          ? unknown
          : never;
type TypeOfKind<K> = K extends readonly (string | number)[] ? K[number] : K extends Schema ? Fields<K> : TypeOfScalar<K>;
type IsOptional<K> = K extends `${string}?` ? true : K extends OptionalOneOf ? true : false;
type RequiredKeys<S> = { [F in keyof S]: IsOptional<S[F]> extends true ? never : F }[keyof S];
type OptionalKeys<S> = { [F in keyof S]: IsOptional<S[F]> extends true ? F : never }[keyof S];
export type Fields<S> = {
  [F in RequiredKeys<S>]: TypeOfKind<S[F]>;
} & { [F in OptionalKeys<S>]?: S[F] extends `${infer B}?` ? TypeOfScalar<B> : S[F] extends OptionalOneOf<infer V> ? V : never };

/** Checks `value` against `schema`; returns a description of the first problem, or undefined. */
export function checkSchema(value: unknown, schema: Schema, at = ''): string | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return `${at || 'message'} must be an object`;
  const obj = value as Record<string, unknown>;
  for (const [field, kind] of Object.entries(schema)) {
    const v = obj[field];
    const where = at ? `${at}.${field}` : field;
    if (isOptionalOneOf(kind)) {
      if (v !== undefined && !kind.optionalOneOf.includes(v as string | number)) return `${where} must be one of ${kind.optionalOneOf.join(', ')}`;
      continue;
    }
    if (isOneOf(kind)) {
      if ((typeof v !== 'string' && typeof v !== 'number') || !kind.includes(v)) return `${where} must be one of ${kind.join(', ')}`;
      continue;
    }
    if (typeof kind === 'object') {
      const problem = checkSchema(v, kind, where);
      if (problem) return problem;
      continue;
    }
    const optional = kind.endsWith('?');
    if (v === undefined) {
      if (optional) continue;
      return `${where} is missing`;
    }
    const base = (optional ? kind.slice(0, -1) : kind) as Scalar;
    const ok =
      base === 'string' ? typeof v === 'string' && v.length <= MAX_STRING_CHARS
      : base === 'uuid' ? typeof v === 'string' && UUID_PATTERN.test(v)
      : base === 'uint' ? Number.isSafeInteger(v) && (v as number) >= 0
      : base === 'number' ? typeof v === 'number' && Number.isFinite(v)
      : base === 'boolean' ? typeof v === 'boolean'
      : base === 'uint[]' ? Array.isArray(v) && v.length <= MAX_LIST_ITEMS && v.every((x) => Number.isSafeInteger(x) && x >= 0)
      : true;
    if (!ok) return `${where} must be ${base === 'uuid' ? 'a job id (a UUID)' : base}`;
  }
  return undefined;
}

function isOneOf(kind: Kind): kind is readonly (string | number)[] {
  return Array.isArray(kind);
}

function isOptionalOneOf(kind: Kind): kind is OptionalOneOf {
  return typeof kind === 'object' && !Array.isArray(kind) && Array.isArray((kind as Partial<OptionalOneOf>).optionalOneOf);
}
