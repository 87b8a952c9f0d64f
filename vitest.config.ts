import { defineConfig } from "vitest/config";

// Unit tests live beside the code (src/**/*.test.ts); process-level tests in test/.
// Tests import workspace packages from their built dist/, so `npm test` builds first.
export default defineConfig({
  test: {
    include: ["libs/*/src/**/*.test.ts", "services/*/src/**/*.test.ts", "cli/src/**/*.test.ts", "test/**/*.test.ts"],
    pool: "forks",
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Process-level tests start whole clusters: two at a time is what 2 cores carry.
    maxWorkers: 2,
  },
});
