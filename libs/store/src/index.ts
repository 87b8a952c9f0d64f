/** @aspen/store — NATS JetStream KV buckets with create-if-absent and CAS, and the object store. */
export {
  Bucket,
  ObjectBucket,
  ReplicaMismatchError,
  Store,
  whileJetStreamSettles,
  type Codec,
  type StoreOptions,
  type Versioned,
} from "./store.js";
export { CONTROL_AUDIT_STREAM, openControlService, type ControlService, type ControlServiceConfig } from "./service.js";
export { AppendOnlyLog, type AppendOnlyLogOptions } from "./append-log.js";
