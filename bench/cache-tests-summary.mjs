// Summarise http-tests/cache-tests results, side by side, per test group.
//
//   node bench/cache-tests-summary.mjs SUITE_DIR LABEL=results.json... [--details]
//
// Each test is classed as the suite's own results page does
// (test-engine/lib/results.mjs, dependencies honoured): a required test
// passes or fails; an optimal one passes or is an "optional" failure; a
// check says yes or no; setup, harness, retry and dependency failures are
// counted apart. "Reused" lists the failures where a stored response was
// served where the test expected the origin to be asked (the message
// "comes from cache"): a cache serving what it must not reuse.
import path from 'node:path'
import fs from 'node:fs'
import { pathToFileURL } from 'node:url'

const [suiteDir, ...rest] = process.argv.slice(2)
const details = rest.includes('--details')
const inputs = rest.filter(a => !a.startsWith('--')).map(arg => {
  const [label, file] = arg.split('=')
  return { label, results: JSON.parse(fs.readFileSync(file, 'utf8')) }
})
const load = p => import(pathToFileURL(path.join(suiteDir, p)).href)
const suites = (await load('tests/index.mjs')).default
const { determineTestResult, resultTypes } = await load('test-engine/lib/results.mjs')

const CLASSES = [
  ['pass', t => t.kind === undefined || t.kind === 'required', resultTypes.pass],
  ['fail', t => t.kind === undefined || t.kind === 'required', resultTypes.fail],
  ['opt pass', t => t.kind === 'optimal', resultTypes.pass],
  ['opt fail', t => t.kind === 'optimal', resultTypes.optional_fail],
  ['check yes', () => true, resultTypes.yes],
  ['check no', () => true, resultTypes.no],
  ['setup', () => true, resultTypes.setup_fail],
  ['dependency', () => true, resultTypes.dependency_fail],
  ['other', () => true, null]
]

function classify (test, results) {
  const r = determineTestResult(suites, test.id, results)
  for (const [name, fits, type] of CLASSES) {
    if (type === null || (r === type && fits(test))) return name
  }
}

function reused (test, results) {
  const r = results[test.id]
  return Array.isArray(r) && (test.kind === undefined || test.kind === 'required') &&
    /comes from cache/.test(r[1] || '')
}

const columns = ['pass', 'fail', 'opt pass', 'opt fail', 'check yes', 'check no', 'setup', 'dependency', 'other']
const totals = Object.fromEntries(inputs.map(i => [i.label, Object.fromEntries(columns.map(c => [c, 0]))]))
const lines = []
lines.push(`| group | tests | ${inputs.map(i => `${i.label}: pass / fail / opt pass / opt fail / yes / no / setup / dep`).join(' | ')} |`)
lines.push(`|---|---|${inputs.map(() => '---').join('|')}|`)
let all = 0
for (const suite of suites) {
  const cells = []
  for (const input of inputs) {
    const counts = Object.fromEntries(columns.map(c => [c, 0]))
    for (const test of suite.tests) {
      const c = classify(test, input.results)
      counts[c]++
      totals[input.label][c]++
    }
    cells.push(columns.slice(0, 8).map(c => counts[c]).join(' / ') + (counts.other ? ` (+${counts.other} other)` : ''))
  }
  all += suite.tests.length
  lines.push(`| ${suite.name} | ${suite.tests.length} | ${cells.join(' | ')} |`)
}
lines.push(`| **all** | ${all} | ${inputs.map(i => '**' + columns.slice(0, 8).map(c => totals[i.label][c]).join(' / ') + '**' +
  (totals[i.label].other ? ` (+${totals[i.label].other} other)` : '')).join(' | ')} |`)
console.log(lines.join('\n'))
console.log()
for (const input of inputs) {
  const bad = []
  for (const suite of suites) for (const test of suite.tests) if (reused(test, input.results)) bad.push(test.id)
  console.log(`${input.label}: required passes ${totals[input.label].pass}; stored responses reused where they must not be: ${bad.length ? bad.join(', ') : 'none'}`)
}
if (details) {
  console.log()
  for (const suite of suites) {
    for (const test of suite.tests) {
      const row = inputs.map(i => `${i.label}=${classify(test, i.results)}`)
      if (new Set(inputs.map(i => classify(test, i.results))).size > 1 || rest.includes('--all')) {
        const why = inputs.map(i => Array.isArray(i.results[test.id]) ? `${i.label}: ${i.results[test.id][1]}` : '').filter(Boolean)
        console.log(`${test.id} [${test.kind || 'required'}] ${row.join(' ')}${why.length ? '\n    ' + why.join('\n    ') : ''}`)
      }
    }
  }
}
