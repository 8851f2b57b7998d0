// Validates an AsyncAPI document with the official parser (@asyncapi/parser), resolving the
// relative $refs into schemas/. Prints every diagnostic; exits 1 on any error-severity one
// (or when the parser returns no document), 0 otherwise. Used by tests/test_asyncapi.py.
//   node tools/asyncapi-validate/validate.mjs docs/asyncapi.yaml
import { Parser, fromFile, DiagnosticSeverity } from '@asyncapi/parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node validate.mjs <asyncapi document>');
  process.exit(2);
}
const names = { 0: 'error', 1: 'warning', 2: 'information', 3: 'hint' };
const { document, diagnostics } = await fromFile(new Parser(), path).parse();
let errors = 0;
for (const d of diagnostics) {
  if (d.severity === DiagnosticSeverity.Error) errors += 1;
  console.log(`${names[d.severity] ?? d.severity}: ${d.code}: ${d.message} at ${(d.path || []).join('/')}`);
}
if (!document || errors) {
  console.log(`INVALID: ${errors} error(s)`);
  process.exit(1);
}
console.log(`VALID: asyncapi ${document.version()}, ${document.channels().length} channels, ` +
  `${document.operations().length} operations, ${document.allMessages().length} messages`);
