// Rewrites one function of ts-proto's output in a folder of generated code; run by gen.sh after
// each `buf generate`, so that `npm run gen` and `npm run gen:check` both see its result.
//   node scripts/patch-gen.mjs <folder>
//
// With forceLong=number, ts-proto's longToNumber throws on an int64 beyond 2^53, and grpc-js
// reports the throw as INTERNAL "Response message parsing error": one event attribute holding a
// nanosecond clock, or a usage sum past 2^53, made every read covering it fail, for good. No
// ts-proto option turns the throw off (forceLong=long, string or bigint would change every int64
// field of the SDK's API), so here the function becomes the nearest double: exact up to 2^53,
// within one part in 2^53 beyond (README, "Integers beyond 2^53"). Anything but the exact function
// ts-proto 2.18.0 writes fails the run, so a ts-proto upgrade that changes it is noticed.
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const THROWING = `function longToNumber(int64: { toString(): string }): number {
  const num = globalThis.Number(int64.toString());
  if (num > globalThis.Number.MAX_SAFE_INTEGER) {
    throw new globalThis.Error("Value is larger than Number.MAX_SAFE_INTEGER");
  }
  if (num < globalThis.Number.MIN_SAFE_INTEGER) {
    throw new globalThis.Error("Value is smaller than Number.MIN_SAFE_INTEGER");
  }
  return num;
}`;

const NEAREST = `function longToNumber(int64: { toString(): string }): number {
  // The nearest double beyond 2^53, not a throw (written by sdks/ts/scripts/patch-gen.mjs).
  return globalThis.Number(int64.toString());
}`;

const folder = process.argv[2];
if (!folder) {
  console.error("usage: node scripts/patch-gen.mjs <folder of generated code>");
  process.exit(2);
}
let patched = 0;
for (const name of readdirSync(folder, { recursive: true }).map(String).sort()) {
  if (!name.endsWith(".ts")) continue;
  const path = join(folder, name);
  const text = readFileSync(path, "utf8");
  if (!text.includes("longToNumber(")) continue;
  const parts = text.split(THROWING);
  if (parts.length !== 2) {
    console.error(`patch-gen: ${path} uses longToNumber but does not define it as ts-proto 2.18.0 does; update scripts/patch-gen.mjs`);
    process.exit(1);
  }
  writeFileSync(path, parts.join(NEAREST));
  patched += 1;
}
if (patched === 0) {
  console.error(`patch-gen: no longToNumber in ${folder}; update scripts/patch-gen.mjs`);
  process.exit(1);
}
