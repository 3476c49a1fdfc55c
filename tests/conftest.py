"""Fixtures shared by the adapter tests: tiny random RoBERTa/BERT encoders and token ids."""
import pytest
import torch


@pytest.fixture
def tiny_encoder():
    """Factory: tiny_encoder(arch, num_labels=2, seed=0) -> a random *ForSequenceClassification in eval mode."""
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    def make(arch="roberta", num_labels=2, seed=0):
        config_cls, model_cls = {"roberta": (RobertaConfig, RobertaForSequenceClassification),
                                 "bert": (BertConfig, BertForSequenceClassification)}[arch]
        config = config_cls(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
        torch.manual_seed(seed)
        return model_cls(config).eval()
    return make


@pytest.fixture
def tiny_ids():
    return torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1234))  # ids 0-2 are special
