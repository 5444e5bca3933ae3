/** Debian's Chromium (apt-get install -y chromium; scripts/setup-e2e.sh installs it). */
export const CHROMIUM = '/usr/bin/chromium';

/** Flags for headless Chromium on a machine without internet: no sandbox (root), no GPU, no background connections. */
export const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
