// ESLint (flat config): typescript-eslint with type information for the rules
// that catch real bugs here (floating promises), plus house rules from STYLE.md.
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["**/dist/**", "**/node_modules/**", "libs/proto/src/gen/**", ".aspen/**", "**/*.js", "**/*.mjs", "**/*.cjs"] },
  ...tseslint.configs.recommended,
  {
    files: ["**/*.ts"],
    languageOptions: {
      // Package tsconfigs cover sources; tsconfig.test.json covers the tests.
      parserOptions: {
        project: ["./libs/*/tsconfig.json", "./services/*/tsconfig.json", "./cli/tsconfig.json", "./tsconfig.test.json"],
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/consistent-type-imports": ["error", { fixStyle: "inline-type-imports" }],
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              group: ["@aspen/*/src/*", "@aspen/*/dist/*"],
              message: "Import a package's front door (@aspen/<name>), not its files.",
            },
          ],
        },
      ],
      "no-restricted-properties": [
        "error",
        { object: "it", property: "only", message: "No focused tests." },
        { object: "describe", property: "only", message: "No focused tests." },
        { object: "test", property: "only", message: "No focused tests." },
      ],
    },
  },
);
