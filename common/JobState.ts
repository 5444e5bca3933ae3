/**
 * States of a training job, as the server keeps them and as both sides see
 * them on the wire (`job/ready`, `job/done`, `job/list/result`).
 *
 *   training  -> finished    the device sent job/finish: adapter written
 *   training  -> cancelled   the device sent job/cancel: last checkpoint kept
 *   cancelled -> training    the device resumed it
 *
 * A failed step does not end a job: the device gets a typed error and the
 * job stays resumable from its last checkpoint.
 */
export const JOB_STATES = ['training', 'finished', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];

const TRANSITIONS: Record<JobState, readonly JobState[]> = {
  training: ['finished', 'cancelled'],
  cancelled: ['training'],
  finished: [],
};

/** Whether a job in state `from` may move to `to`. */
export function canTransition(from: JobState, to: JobState): boolean {
  return TRANSITIONS[from].includes(to);
}
