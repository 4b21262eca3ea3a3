//! Why a stage stops (a restart resumes from its last commit).

use rdkafka::error::KafkaError;

/// Why a stage stopped (a restart resumes from its last commit).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Setup(String),
    #[error("restore of {topic} partition {partition}: {why}")]
    Restore {
        topic: String,
        partition: i32,
        why: String,
    },
    #[error(
        "kafka transaction failed for good ({0}); stopping so a restart resumes from the last committed transaction (if another instance uses the same kafka.instance_id, give each a unique one)"
    )]
    TransactionFatal(KafkaError),
}
