/**
 * One page of a ListJobs answer: the matching jobs newest first (submitted_at,
 * then id). The page token is a cursor (the last job's submission time and
 * id), so the next page starts right after it even when that job has since
 * left the filter (a QUEUED job got placed) or was removed by retention. A
 * token that was the last job's id instead failed the next page with
 * "unknown or expired token" whenever that happened, as it easily does while
 * paging through a busy queue.
 */
import type { Job } from "@aspen/proto";
import { InvalidArgumentError } from "@aspen/runtime";

interface Cursor {
  submittedMs: number;
  id: string;
}

const TOKEN_PREFIX = "c1.";

/** Newest first: later submission first, then the greater id (a total order: ids are unique). */
export function newestFirst(a: Job, b: Job): number {
  const d = (b.submittedAt?.getTime() ?? 0) - (a.submittedAt?.getTime() ?? 0);
  return d !== 0 ? d : a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

function cursorOf(job: Job): Cursor {
  return { submittedMs: job.submittedAt?.getTime() ?? 0, id: job.id };
}

/** Whether `job` sorts after the cursor (newest first), i.e. belongs to a later page. */
function afterCursor(job: Job, cursor: Cursor): boolean {
  // Runs once per indexed job per call: no cursor object built here.
  const submittedMs = job.submittedAt?.getTime() ?? 0;
  return submittedMs < cursor.submittedMs || (submittedMs === cursor.submittedMs && job.id < cursor.id);
}

function encodePageToken(job: Job): string {
  const { submittedMs, id } = cursorOf(job);
  return TOKEN_PREFIX + Buffer.from(`${submittedMs}\n${id}`).toString("base64url");
}

function decodePageToken(token: string, byId?: (id: string) => Job | undefined): Cursor {
  const bad = () => new InvalidArgumentError("page_token", "not a token this service issued (pass next_page_token as it came)");
  if (!token.startsWith(TOKEN_PREFIX)) {
    // During a rolling upgrade a client may page through replicas of both versions.
    const job = byId?.(token);
    if (!job) throw bad();
    return cursorOf(job);
  }
  const text = Buffer.from(token.slice(TOKEN_PREFIX.length), "base64url").toString();
  const nl = text.indexOf("\n");
  const submittedMs = Number(text.slice(0, nl));
  if (nl < 0 || !Number.isSafeInteger(submittedMs) || nl === text.length - 1) throw bad();
  return { submittedMs, id: text.slice(nl + 1) };
}

/**
 * The first `size` jobs of `jobs` that pass `matches`, newest first, after the
 * cursor `pageToken` ("" for the first page); `nextPageToken` is "" on the last page.
 */
export function pageOfJobs(
  jobs: Iterable<Job>,
  matches: (job: Job) => boolean,
  size: number,
  pageToken: string,
  /** A job by id: a token from a version before cursors (the last job's id) still pages on while that job exists. */
  byId?: (id: string) => Job | undefined,
): { jobs: Job[]; nextPageToken: string } {
  const cursor = pageToken ? decodePageToken(pageToken, byId) : undefined;
  const sorted: Job[] = [];
  for (const job of jobs) if ((!cursor || afterCursor(job, cursor)) && matches(job)) sorted.push(job);
  sorted.sort(newestFirst);
  const page = sorted.slice(0, size);
  const last = page[page.length - 1];
  return { jobs: page, nextPageToken: sorted.length > size && last ? encodePageToken(last) : "" };
}
