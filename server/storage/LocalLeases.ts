import type { Leases } from './Store';

/** The leases of a server that trains every job itself (the file store's, and the registry's default): always its own, never lost. */
export const LOCAL_LEASES: Leases = {
  acquire: async () => undefined,
  release: async () => undefined,
  renew: async () => [],
  heldElsewhere: async () => 0,
  onLost: () => undefined,
};
