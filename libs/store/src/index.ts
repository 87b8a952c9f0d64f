/** @aspen/store — NATS JetStream KV buckets with create-if-absent and CAS, and the object store. */
export { Bucket, ObjectBucket, ReplicaMismatchError, Store, type Codec, type StoreOptions, type Versioned } from "./store.js";
export { openControlService, type ControlService, type ControlServiceConfig } from "./service.js";
