//! Topic names, topic filters and the subscription trie (MQTT 5.0 §4.7,
//! MQTT 3.1.1 §4.7).
