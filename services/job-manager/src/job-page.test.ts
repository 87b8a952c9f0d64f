import { describe, expect, it } from "vitest";
import { Job, JobState } from "@aspen/proto";
import { InvalidArgumentError } from "@aspen/runtime";
import { newestFirst, pageOfJobs } from "./job-page.js";

const job = (id: string, submittedMs: number, state = JobState.JOB_STATE_QUEUED) =>
  Job.fromPartial({ id, submittedAt: new Date(submittedMs), state });

/** Every page of `jobs` through pageOfJobs, following the tokens. */
function allPages(jobs: Job[], size: number, matches: (j: Job) => boolean = () => true): Job[][] {
  const pages: Job[][] = [];
  let token = "";
  do {
    const page = pageOfJobs(jobs, matches, size, token);
    pages.push(page.jobs);
    token = page.nextPageToken;
  } while (token && pages.length < 10_000);
  return pages;
}

describe("pageOfJobs", () => {
  it("pages newest first, ties by id, with a token until the last page", () => {
    const jobs = Array.from({ length: 250 }, (_, i) => job(`j${String(i).padStart(3, "0")}`, 1_000 + Math.floor(i / 3)));
    const pages = allPages(jobs, 100);
    expect(pages.map((p) => p.length)).toEqual([100, 100, 50]);
    const ids = pages.flat().map((j) => j.id);
    expect(ids).toEqual([...jobs].sort(newestFirst).map((j) => j.id));
    // Same submission time: the greater id first.
    expect(ids.slice(0, 3)).toEqual(["j249", "j248", "j247"]);
  });

  it("gives no token when the matches fit one page exactly", () => {
    const jobs = Array.from({ length: 10 }, (_, i) => job(`j${i}`, i));
    expect(pageOfJobs(jobs, () => true, 10, "")).toMatchObject({ nextPageToken: "" });
    expect(pageOfJobs(jobs, () => true, 9, "").nextPageToken).not.toBe("");
  });

  it("applies the filter before paging", () => {
    const jobs = Array.from({ length: 60 }, (_, i) =>
      job(`j${i}`, i, i % 3 === 0 ? JobState.JOB_STATE_RUNNING : JobState.JOB_STATE_QUEUED),
    );
    const running = allPages(jobs, 7, (j) => j.state === JobState.JOB_STATE_RUNNING).flat();
    expect(running.map((j) => j.id)).toEqual(
      jobs
        .filter((j) => j.state === JobState.JOB_STATE_RUNNING)
        .sort(newestFirst)
        .map((j) => j.id),
    );
  });

  it("continues after the token's job even when that job has left the filter or the index", () => {
    const jobs = Array.from({ length: 30 }, (_, i) => job(`j${String(i).padStart(2, "0")}`, i));
    const queued = (j: Job) => j.state === JobState.JOB_STATE_QUEUED;
    const first = pageOfJobs(jobs, queued, 10, "");
    expect(first.jobs.map((j) => j.id).at(-1)).toBe("j20");
    // The last job of the page got placed, and the one before it was removed.
    const moved = jobs
      .map((j) => (j.id === "j20" ? { ...j, state: JobState.JOB_STATE_ASSIGNED } : j))
      .filter((j) => j.id !== "j21");
    const second = pageOfJobs(moved, queued, 10, first.nextPageToken);
    expect(second.jobs.map((j) => j.id)).toEqual(["j19", "j18", "j17", "j16", "j15", "j14", "j13", "j12", "j11", "j10"]);
  });

  it("matches a full sort for random indexes, filters and page sizes", () => {
    let seed = 7;
    const random = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
    for (let trial = 0; trial < 200; trial++) {
      const n = Math.floor(random() * 120);
      const jobs = Array.from({ length: n }, (_, i) => job(`id-${Math.floor(random() * 1e6)}-${i}`, Math.floor(random() * 20)));
      const size = 1 + Math.floor(random() * 15);
      const keep = random() < 0.5 ? () => true : (j: Job) => j.id.charCodeAt(j.id.length - 1) % 2 === 0;
      expect(
        allPages(jobs, size, keep)
          .flat()
          .map((j) => j.id),
      ).toEqual(
        jobs
          .filter(keep)
          .sort(newestFirst)
          .map((j) => j.id),
      );
    }
  });

  it("pages on from a token of the version before cursors (the last job's id) while that job exists", () => {
    const jobs = Array.from({ length: 30 }, (_, i) => job(`j${String(i).padStart(2, "0")}`, i));
    const byId = (id: string) => jobs.find((j) => j.id === id);
    const next = pageOfJobs(jobs, () => true, 5, "j20", byId);
    expect(next.jobs.map((j) => j.id)).toEqual(["j19", "j18", "j17", "j16", "j15"]);
    expect(() => pageOfJobs(jobs, () => true, 5, "gone", byId)).toThrow(InvalidArgumentError);
  });

  it("refuses a token it did not issue, naming page_token", () => {
    for (const token of [
      "j12",
      "c1.",
      "c1.!!!",
      `c1.${Buffer.from("x\nid").toString("base64url")}`,
      `c1.${Buffer.from("12\n").toString("base64url")}`,
    ]) {
      let thrown: unknown;
      try {
        pageOfJobs([job("a", 1)], () => true, 10, token);
      } catch (err) {
        thrown = err;
      }
      expect(thrown, token).toBeInstanceOf(InvalidArgumentError);
      expect((thrown as Error).message).toMatch(/^page_token: /);
    }
  });
});
