#!/usr/bin/env node
// The `aspen` command. A committed stub so npm links the bin at install time,
// before the TypeScript build has produced dist/.
import "../dist/main.js";
