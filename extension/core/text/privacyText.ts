/**
 * What the product says about privacy, in one place: the confirm dialog, the
 * dashboard and the CLI show these words (README "What crosses the wire" says
 * the same at length). They must stay exact: in the standard mode a team
 * server receives every next-token id, which is the code's text itself; in
 * the label-private mode it receives activations and gradients, not ids.
 */

import { PRIVACY_AUDIT } from './privacyAudit';

/** Where the job's training server runs, and in which mode. */
export type ServerPlace = 'embedded' | 'team' | 'team-label-private';

/** What the frames carry, for the audit's figure: activation bits and the first layers not sent. */
export interface Exposure {
  bits: number;
  skipLayers: number;
}

/**
 * The measured share of tokens a server recovered in our audit, for the
 * configuration in use (bench/privacy.ts writes privacyAudit.ts): the audited
 * configuration with the same bits and the most layers skipped that does not
 * exceed the user's, so the figure never understates the exposure.
 */
export function auditSentence(place: ServerPlace, exposure: Exposure): string {
  if (place === 'embedded') return '';
  if (place === 'team') return 'In our privacy audit a server reads 100% of the training tokens exactly: the target ids are the text.';
  const rows = PRIVACY_AUDIT.labelPrivate.filter((r) => r.activationBits === exposure.bits && r.skipLayers <= exposure.skipLayers);
  const row = rows.sort((a, b) => b.skipLayers - a.skipLayers)[0] ?? PRIVACY_AUDIT.labelPrivate.find((r) => r.activationBits === 8 && r.skipLayers === 0)!;
  const sent = row.skipLayers === 0 ? 'every layer sent' : `the first ${row.skipLayers} of its ${PRIVACY_AUDIT.layers} layers not sent`;
  return `In our privacy audit (${PRIVACY_AUDIT.model}, ${row.activationBits}-bit frames, ${sent}), a server recovered about ${Math.round(100 * row.recovered)}% ` +
    `of the workspace's tokens exactly with the strongest attack we tried (${row.attack}).`;
}

/** The place for a job's settings. */
export function serverPlace(serverUrl: string | undefined, labelPrivate: boolean | undefined): ServerPlace {
  if (!serverUrl) return 'embedded';
  return labelPrivate ? 'team-label-private' : 'team';
}

const LABEL_PRIVATE_LINE =
  'Label-private: token ids are not sent as such (the loss is computed here). The team server receives activations of the tapped ' +
  'layers and loss gradients; they are not text, but a server can recover much of the code from them (inversion attacks), most ' +
  'from early layers ("skip layers" sends fewer), and one that computes the public model\'s head can read the next-token ids back ' +
  'from the gradients (in our measurement, all of them).';

/** The dialog's line before a job starts. */
export function confirmPrivacyLine(place: ServerPlace, exposure: Exposure): string {
  if (place === 'team-label-private') return `${LABEL_PRIVATE_LINE} ${auditSentence(place, exposure)}`;
  return place === 'embedded'
    ? 'The training server runs inside VS Code on this computer: nothing is sent over the network.'
    : 'The team server will receive the content of these files as token ids (your code itself, readable by anyone with the ' +
      "model's public tokenizer) and as activations. Use only a server run by people you trust with this code. " + auditSentence(place, exposure);
}

/** The dashboard's "What crossed the wire". */
export function wireStatement(place: ServerPlace, exposure: Exposure): string {
  if (place === 'team-label-private') return `${LABEL_PRIVATE_LINE} ${auditSentence(place, exposure)} No head weights are sent. The server's disk keeps no activations, gradients or text.`;
  if (place === 'embedded') {
    return 'Nothing left this computer: the training server ran inside VS Code (on 127.0.0.1). With a team server, it receives your code ' +
      'as token ids and activations (see mobillm.serverUrl), or, label-private, as activations and gradients only.';
  }
  return 'Sent to the team server for every training and held-out token: the id of the next token, which is your code itself ' +
    "(anyone with the model's public tokenizer reads it back exactly), and the tapped layers' hidden states, quantized, from which " +
    'much of the code can also be recovered; once per model, the public head weights. Files are not uploaded as files, but their ' +
    "content reaches the server. The server's disk keeps no token ids, activations or text. Use a server inside your team's trust " +
    `boundary, over TLS; "skip layers" sends fewer layers; label-private mode (the default) sends no token ids as such. ${auditSentence(place, exposure)}`;
}
