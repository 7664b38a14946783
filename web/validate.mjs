// Validate a glTF/GLB file with the Khronos glTF Validator; print its JSON report.
// Usage: node web/validate.mjs FILE.glb
import { readFileSync } from "node:fs";
import validator from "gltf-validator";

const file = process.argv[2];
const data = new Uint8Array(readFileSync(file));
const report = await validator.validateBytes(data, { maxIssues: 200 });
process.stdout.write(JSON.stringify(report));
