// Debian's chromium for the page tests (e2e.mjs, cluster.mjs): the flags that
// keep it on loopback and quiet, and one --disable-features merged with
// Playwright's own (Chromium honours only the last such switch), checked on
// the running browser. Each launch gets a fresh profile, removed by close().

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';
/** Ours, merged with Playwright's: local addresses as candidates, not mDNS names. */
const OUR_DISABLED_FEATURES = ['WebRtcHideLocalIpsWithMdns'];
const ARGS = [
  '--allow-loopback-in-peer-connection',
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
// Over HTTPS (tests/browser.rs serves with a test certificate): trust exactly
// that certificate's key (env INFERCAST_SPKI, base64 SHA-256 of its SPKI);
// node's own fetch trusts it through NODE_EXTRA_CA_CERTS.
if (process.env.INFERCAST_SPKI) ARGS.push(`--ignore-certificate-errors-spki-list=${process.env.INFERCAST_SPKI}`);

/** The browser's command line, as chrome://version shows it. */
export async function commandLine(context) {
  const page = await context.newPage();
  try {
    await page.goto('chrome://version', { timeout: 10_000 });
    return (await page.textContent('#command_line', { timeout: 5000 })).trim().split(/\s+/);
  } finally {
    await page.close();
  }
}

/** Playwright's own `--disable-features=...` switch, read from a probe launch. */
async function playwrightDisableFeatures() {
  const probe = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30_000 });
  try {
    return (await commandLine(probe)).filter((a) => a.startsWith('--disable-features='));
  } finally {
    await probe.close();
  }
}

/**
 * A browser context in a fresh profile with the merged `--disable-features`
 * (checked: throws if the running browser has another) and `extraArgs`
 * (e.g. a fake camera). Returns
 * `{ context, disableFeatures, close }`; `close()` also removes the profile.
 */
export async function launch({ viewport = { width: 1280, height: 400 }, extraArgs = [] } = {}) {
  const playwrightFlags = await playwrightDisableFeatures();
  const features = playwrightFlags.flatMap((f) => f.slice('--disable-features='.length).split(','));
  const merged = `--disable-features=${[...new Set([...features, ...OUR_DISABLED_FEATURES])].join(',')}`;
  const profile = await mkdtemp(join(tmpdir(), 'infercast-e2e-'));
  const close = async () => {
    await context?.close().catch(() => {});
    await rm(profile, { recursive: true, force: true }).catch(() => {});
  };
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      ignoreDefaultArgs: playwrightFlags, // replaced by the merged one
      args: [...ARGS, ...extraArgs, merged],
      viewport,
      timeout: 30_000,
    });
    const flags = (await commandLine(context)).filter((a) => a.startsWith('--disable-features='));
    if (flags.length !== 1 || flags[0] !== merged) {
      throw new Error(`expected exactly ${merged}, the browser runs with: ${flags.join(' ')}`);
    }
  } catch (e) {
    await close();
    throw e;
  }
  return { context, disableFeatures: merged, close };
}
