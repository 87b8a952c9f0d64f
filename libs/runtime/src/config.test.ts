import { describe, expect, it } from "vitest";
import { z } from "zod";
import { ConfigError, env, loadConfig } from "./config.js";
import { parseDurationMs } from "./time.js";

const schema = z.object({
  ASPEN_PORT: env.port(50051),
  ASPEN_WAIT: env.durationMs("5s"),
  ASPEN_LABELS: env.labels(""),
  ASPEN_LIST: env.list("a,b"),
});

describe("config", () => {
  it("applies documented defaults; empty counts as unset", () => {
    expect(loadConfig(schema, { ASPEN_PORT: "" })).toEqual({
      ASPEN_PORT: 50051,
      ASPEN_WAIT: 5000,
      ASPEN_LABELS: {},
      ASPEN_LIST: ["a", "b"],
    });
  });

  it("parses values", () => {
    expect(
      loadConfig(schema, { ASPEN_PORT: "7", ASPEN_WAIT: "1m30s", ASPEN_LABELS: "zone=a, tier=db", ASPEN_LIST: "x" }),
    ).toEqual({
      ASPEN_PORT: 7,
      ASPEN_WAIT: 90_000,
      ASPEN_LABELS: { zone: "a", tier: "db" },
      ASPEN_LIST: ["x"],
    });
  });

  it("names every bad variable with its value", () => {
    let error: unknown;
    try {
      loadConfig(schema, { ASPEN_PORT: "http", ASPEN_WAIT: "soon", ASPEN_LABELS: "novalue" });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems.join("\n");
    expect(problems).toContain('ASPEN_PORT="http"');
    expect(problems).toContain('ASPEN_WAIT="soon"');
    expect(problems).toContain('ASPEN_LABELS="novalue"');
  });

  it("parses durations", () => {
    expect(parseDurationMs("250ms")).toBe(250);
    expect(parseDurationMs("2h")).toBe(7_200_000);
    expect(parseDurationMs("1500")).toBe(1500);
    expect(parseDurationMs("5 s")).toBeUndefined();
    expect(parseDurationMs("")).toBeUndefined();
  });
});
