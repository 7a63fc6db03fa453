// Bundles the journey canvas into static/build/ (run by `npm run build`, from `make assets`).
//
// @antv/x6 inserts its stylesheets as <style> elements when a graph or plugin starts, which
// the Content-Security-Policy refuses; the bundle gets a loader that does nothing instead
// (x6-css-loader.js), and the same CSS, read from the package, is written next to it.
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "build");
// The x6 parts the canvas uses, each with its stylesheet.
const X6_STYLES = ["style", "plugin/dnd/style", "plugin/minimap/style", "plugin/selection/style", "plugin/snapline/style"];

const quietStyles = {
  name: "x6-css-in-a-file",
  setup(build) {
    build.onResolve({ filter: /\/css-loader$/ }, (args) =>
      args.importer.includes("/@antv/x6/") ? { path: join(here, "x6-css-loader.js") } : undefined,
    );
  },
};

await mkdir(out, { recursive: true });
const result = await esbuild.build({
  entryPoints: [join(here, "journey-canvas.js")],
  outdir: out,
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "iife",
  target: ["es2020"],
  legalComments: "linked",
  plugins: [quietStyles],
  logLevel: "warning",
  metafile: true,
});
const loaderUsed = Object.keys(result.metafile.inputs).some((path) => path.endsWith("x6-css-loader.js"));
if (!loaderUsed) {
  throw new Error("@antv/x6 no longer loads its CSS through common/css-loader: update static/src/build.mjs");
}

const parts = [];
for (const path of X6_STYLES) {
  const { content } = await import(`@antv/x6/es/${path}/raw.js`);
  parts.push(`/* @antv/x6 ${path} */\n${content.trim()}\n`);
}
await writeFile(join(out, "journey-canvas.css"), parts.join("\n"));
