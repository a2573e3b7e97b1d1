// Bundles src/demo.js (and the CSS it imports) into tusd_py/http/demo/demo.js and demo.css,
// the files `tusd-py serve --demo` ships, plus the licenses of the npm packages bundled.
// Run: npm ci && npm run build
import * as fs from 'node:fs'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const here = path.dirname(fileURLToPath(import.meta.url))
const outdir = path.resolve(here, '../../tusd_py/http/demo')

const result = await build({
  entryPoints: { demo: path.join(here, 'src/demo.js') },
  outdir,
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  // The bundle is committed: no source maps or absolute paths that change from one machine
  // to the next, so the same lock file gives the same bytes.
  sourcemap: false,
  legalComments: 'eof',
  charset: 'utf8',
  define: { 'process.env.NODE_ENV': '"production"' },
  metafile: true,
  logLevel: 'info',
})

// The packages whose code went into the bundle, found from the inputs esbuild read.
const packages = new Map()
for (const input of Object.keys(result.metafile.inputs)) {
  const match = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//)
  if (match) packages.set(match[1], path.join(here, 'node_modules', match[1]))
}
const sections = [...packages.entries()]
  .sort(([a], [b]) => a.localeCompare(b))
  .map(([name, dir]) => {
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'))
    const licenseFile = fs
      .readdirSync(dir)
      .find((file) => /^(licen[cs]e|copying)(\.|$)/i.test(file))
    const text = licenseFile
      ? fs.readFileSync(path.join(dir, licenseFile), 'utf8').trim()
      : `License: ${meta.license ?? 'see the package'}`
    return `${name} ${meta.version}\n${'-'.repeat(name.length + meta.version.length + 1)}\n${text}\n`
  })
fs.writeFileSync(
  path.join(outdir, 'THIRD-PARTY-LICENSES.txt'),
  `demo.js and demo.css bundle these npm packages (examples/browser-demo builds them):\n\n${sections.join('\n')}`,
)

for (const [file, info] of Object.entries(result.metafile.outputs)) {
  console.log(`${path.relative(here, path.resolve(file))}: ${info.bytes} bytes`)
}
console.log(`licenses of ${packages.size} packages: ${path.relative(here, outdir)}/THIRD-PARTY-LICENSES.txt`)
