/** Publish permissions per service user (scheduler, job-manager, coordinator, agent). */
export const PERMISSIONS: Record<string, string[]>;
/** The nats-server `authorization` block, with the given password per user. */
export function natsAuthorization(passwords: Record<string, string>): string;
